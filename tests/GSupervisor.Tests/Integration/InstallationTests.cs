using System.Text.RegularExpressions;

namespace GSupervisor.Tests.Integration;

/// <summary>
/// The shipped binary where people deploy it: its files replaced by a package upgrade while it runs, a
/// read-only HOME (systemd's ProtectHome=), and .NET apps beside it that want their own diagnostics socket.
/// </summary>
[TestFixture]
public class InstallationTests
{
    private const int SIGKILL = 9;
    private static readonly TimeSpan Long = TimeSpan.FromSeconds(60);

    /// <summary>A private copy of the installed lib/gsupervisor directory, whose files a test may replace.</summary>
    private static string CopyInstalledTree(TempDirectory dir)
    {
        var lib = dir.File("lib/gsupervisor");
        Directory.CreateDirectory(lib);
        foreach (var file in Directory.GetFiles(Path.Combine(Paths.InstalledRoot, "usr/lib/gsupervisor")))
            File.Copy(file, Path.Combine(lib, Path.GetFileName(file))); // keeps the mode bits
        return lib;
    }

    /// <summary>As dpkg installs a file: the new content goes to PATH.dpkg-new, which is then renamed over PATH.</summary>
    private static void ReplaceAsDpkgDoes(string path, string content)
    {
        var next = path + ".dpkg-new";
        File.WriteAllText(next, content);
        File.SetUnixFileMode(next, (UnixFileMode)0b111_101_101);
        File.Move(next, path, overwrite: true);
    }

    [Test]
    public void After_a_package_upgrade_replaced_every_file_reloads_and_crash_restarts_still_work()
    {
        using var dir = new TempDirectory();
        var lib = CopyInstalledTree(dir);
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "127.0.0.1:0", "--restart-delay", "100ms", "--", Paths.TestChild],
            program: Path.Combine(lib, "gsupervisor"));
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);

        // Every file of the installation replaced by something that cannot work: were any of them read again
        // (the binary re-executed from disk, the exec helper or the native library looked up anew), the
        // reload would fail with the script's exit code 99 or a load error.
        foreach (var file in Directory.GetFiles(lib))
            ReplaceAsDpkgDoes(file, "#!/bin/sh\necho 'the replaced file was run' >&2\nexit 99\n");

        var (code, stdout, stderr) = Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0), stdout + stderr);
        supervisor.WaitForReady(2);
        Http.UntilGeneration(() => Http.Get(port), 2);

        var second = supervisor.WaitForGenerationPid(2);
        Assert.That(Native.Kill(second, SIGKILL), Is.EqualTo(0));
        supervisor.WaitForLine(@"generation 2 \(pid \d+\) exited unexpectedly");
        supervisor.WaitForReady(3);
        Assert.That(Http.Get(port), Does.EndWith("gen=3"));
        Assert.That(supervisor.Output, Does.Not.Contain("the replaced file was run"));
    }

    [Test]
    public void Runs_and_reloads_with_a_read_only_home_as_under_ProtectHome()
    {
        Assert.That(Native.GetEffectiveUserId(), Is.EqualTo(0u), "a mount namespace needs root (CI runs as root)");
        using var dir = new TempDirectory();
        var home = dir.File("home");
        Directory.CreateDirectory(home);
        var report = dir.File("report");
        // The supervisor starts in a mount namespace of its own where HOME is a read-only bind mount.
        const string readOnlyHome = "mount --bind \"$HOME\" \"$HOME\" && mount -o remount,bind,ro \"$HOME\" && exec \"$0\" \"$@\"";
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "127.0.0.1:0", "--ready", "delay:100ms", "--", "/bin/sh", "-c",
                $"touch \"$HOME/probe\" 2>> {report}.$GSUPERVISOR_GENERATION; exec sleep 600"],
            environment: new Dictionary<string, string> { ["HOME"] = home },
            program: "/usr/bin/unshare", prefix: ["--mount", "--propagation", "private", "--", "/bin/sh", "-c", readOnlyHome]);
        supervisor.WaitForReady(1);
        Poll.Until(() => File.Exists(report + ".1") && File.ReadAllText(report + ".1").Length > 0, Long, "the child's write attempt");
        Assert.That(File.ReadAllText(report + ".1"), Does.Contain("Read-only file system"), "HOME really is read-only in there");

        var (code, stdout, stderr) = Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0), stdout + stderr);
        supervisor.WaitForReady(2);
    }

    [Test]
    public void Spawns_leave_no_dotnet_diagnostic_sockets_or_extracted_files_and_a_dotnet_child_binds_its_own_socket()
    {
        using var dir = new TempDirectory();
        var tmp = dir.File("tmp"); // the .NET runtime puts its diagnostics socket in TMPDIR
        var home = dir.File("home"); // where a single-file build would extract its native libraries
        Directory.CreateDirectory(tmp);
        Directory.CreateDirectory(home);
        var environment = new Dictionary<string, string> { ["TMPDIR"] = tmp, ["HOME"] = home };
        string[] DiagnosticSockets() => Directory.GetFiles(tmp, "dotnet-diagnostic-*").Select(Path.GetFileName).ToArray()!;

        using (var supervisor = SupervisorProcess.Start(
            ["--listen", "127.0.0.1:0", "--ready", "delay:20ms", "--", "/bin/sh", "-c", "exec sleep 600"], environment: environment))
        {
            supervisor.WaitForReady(1);
            for (var generation = 2; generation <= 20; generation++)
            {
                var (code, stdout, stderr) = Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]);
                Assert.That(code, Is.EqualTo(0), stdout + stderr);
            }
            supervisor.WaitForReady(20);
            Assert.That(DiagnosticSockets(), Is.Empty, "20 spawns, and neither the supervisor nor its exec helper left a diagnostics socket");
            Assert.That(Directory.GetFileSystemEntries(home), Is.Empty, "nothing extracted to a writable HOME either");
        }

        // A .NET app under gsupervisor has the diagnostics socket of its own pid, bound and listening, so
        // dotnet-trace, dotnet-counters and dotnet-dump can attach to it.
        using var dotnet = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild], environment: environment);
        for (var generation = 1; generation <= 3; generation++)
        {
            if (generation > 1)
            {
                var (code, stdout, stderr) = Verb.Run(["reload", "--wait", "--control", dotnet.ControlPath]);
                Assert.That(code, Is.EqualTo(0), stdout + stderr);
            }
            dotnet.WaitForReady(generation);
            var pid = dotnet.WaitForGenerationPid(generation);
            var socketName = new Regex($@"^dotnet-diagnostic-{pid}-\d+-socket$");
            Poll.Until(() => DiagnosticSockets().Any(socketName.IsMatch), Long, $"generation {generation}'s diagnostics socket");
            var path = Path.Combine(tmp, DiagnosticSockets().Single(socketName.IsMatch));
            Assert.That(IsListening(path), Is.True, $"{path} is bound and listening");
        }
        // Only the serving child's socket is left: the generations that stopped removed theirs, and nothing else made one.
        var serving = dotnet.WaitForGenerationPid(3);
        Poll.Until(() => DiagnosticSockets().All(n => n.StartsWith($"dotnet-diagnostic-{serving}-", StringComparison.Ordinal)), Long,
            "the stopped generations' diagnostics sockets to go");
    }

    [Test]
    public void The_exec_helper_switches_to_ids_above_2_to_the_31()
    {
        Assert.That(Native.GetEffectiveUserId(), Is.EqualTo(0u), "switching users needs root (CI runs as root)");
        // Id-mapped directory users (SSSD, winbind) have uids like these; no passwd entry is needed to switch.
        var helper = Path.Combine(Paths.InstalledRoot, "usr/lib/gsupervisor/gsupervisor-exec");
        var info = new System.Diagnostics.ProcessStartInfo(helper) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "15", Environment.ProcessId.ToString(), "0", "mapped:3000000001:3000000002", "/bin/sh", "sh", "-c", "echo $(id -u) $(id -g)" })
            info.ArgumentList.Add(a);
        using var process = System.Diagnostics.Process.Start(info)!;
        try
        {
            var output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
            Assert.That(process.WaitForExit(TimeSpan.FromSeconds(30)), Is.True);
            Assert.That(process.ExitCode, Is.EqualTo(0), output);
            Assert.That(output.Trim(), Is.EqualTo("3000000001 3000000002"));
        }
        finally
        {
            if (!process.HasExited) process.Kill();
        }
    }

    /// <summary>Whether a Unix socket bound to <paramref name="path"/> is listening (/proc/net/unix, flag __SO_ACCEPTCON).</summary>
    private static bool IsListening(string path) =>
        File.ReadLines("/proc/net/unix").Skip(1)
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Any(fields => fields.Length >= 8 && fields[^1] == path && fields[3] == "00010000");
}
