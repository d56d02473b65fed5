// Overview
// --------
// `gsupervisor upgrade`: the daemon re-executes its binary in place. Against the installed native binary, run
// either from where it is installed or from a copy in a temporary directory, where a test can put another
// binary in its place as a package upgrade does (a new file renamed over the old one): the next version (`make
// next`, whose upgrade state has a field this one does not know), a binary that fails its check, or a script
// that makes the check or the exec slow enough to send signals into them.

using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace GSupervisor.Tests.Integration;

[TestFixture]
public class UpgradeTests
{
    private const int SIGKILL = 9, SIGUSR2 = 12, SIGTERM = 15;
    private static readonly TimeSpan Long = TimeSpan.FromSeconds(60);
    private static readonly string[] Files = ["gsupervisor", "gsupervisor-exec", "libMonoPosixHelper.so"];

    /// <summary>The installed binary and what it loads from beside itself, copied to <paramref name="dir"/>/lib.</summary>
    private static string CopyInstalled(TempDirectory dir)
    {
        var lib = dir.File("lib");
        Directory.CreateDirectory(Path.Combine(lib, "dotnet"));
        foreach (var file in Files) File.Copy(Paths.Installed($"usr/lib/gsupervisor/{file}"), Path.Combine(lib, file));
        foreach (var dll in Directory.GetFiles(Paths.Installed("usr/lib/gsupervisor/dotnet/GSupervisor.StartupHook.dll")[..^"/GSupervisor.StartupHook.dll".Length]))
            File.Copy(dll, Path.Combine(lib, "dotnet", Path.GetFileName(dll)));
        return Path.Combine(lib, "gsupervisor");
    }

    /// <summary>As <see cref="CopyInstalled"/>, plus a spare copy of the binary beside it, which stays when a test replaces the first.</summary>
    private static (string Binary, string Spare) CopyInstalledWithSpare(TempDirectory dir)
    {
        var binary = CopyInstalled(dir);
        var spare = dir.File("lib/gsupervisor.real");
        File.Copy(binary, spare);
        return (binary, spare);
    }

    /// <summary>Puts <paramref name="source"/> at <paramref name="target"/> as dpkg does: a new file renamed over the old one.</summary>
    private static void ReplaceFile(string source, string target)
    {
        var temporary = target + ".new";
        File.Copy(source, temporary, overwrite: true);
        File.Move(temporary, target, overwrite: true);
    }

    private static void WriteScript(string path, string body, string shell = "/bin/sh")
    {
        var temporary = path + ".new";
        File.WriteAllText(temporary, $"#!{shell}\n{body}\n");
        File.SetUnixFileMode(temporary, (UnixFileMode)0b111_101_101);
        File.Move(temporary, path, overwrite: true);
    }

    private static (int Code, string Stdout, string Stderr) Upgrade(SupervisorProcess supervisor, string? binary = null) =>
        Verb.Run(["upgrade", "--wait", "--control", supervisor.ControlPath], program: binary);

    private static JsonElement Status(SupervisorProcess supervisor, string? binary = null)
    {
        var (code, stdout, stderr) = Verb.Run(["status", "--json", "--control", supervisor.ControlPath], program: binary);
        Assert.That(code, Is.EqualTo(0), stderr);
        return JsonDocument.Parse(stdout).RootElement.Clone();
    }

    private static int OpenFds(int pid) => Directory.GetFiles($"/proc/{pid}/fd").Length;

    /// <summary>What process <paramref name="pid"/>'s fds <paramref name="from"/> to <paramref name="to"/> are ("socket:[123]", "pipe:[45]", paths).</summary>
    private static List<string> FdTargets(int pid, int from, int to = int.MaxValue) =>
        Directory.GetFiles($"/proc/{pid}/fd")
            .Where(f => int.Parse(Path.GetFileName(f), CultureInfo.InvariantCulture) is var fd && fd >= from && fd <= to)
            .Select(f => new FileInfo(f).LinkTarget).OfType<string>().Distinct().Order().ToList();

    [Test]
    public void A_hundred_upgrades_under_load_fail_no_request_and_leave_the_child_fds_and_memory_as_they_were()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.HelloKestrel]);
        var port = supervisor.WaitForPort();
        var child = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        Assert.That(Upgrade(supervisor).Code, Is.EqualTo(0), "a first upgrade, so both figures below are of a supervisor that has upgraded");
        var fdsBefore = OpenFds(supervisor.Pid);
        var rssBefore = Native.RssKiB(supervisor.Pid);

        using var keepAlive = new KeepAliveLoad(port, connections: 8);
        using var newConnections = new NewConnectionLoad(port, workers: 4);
        Poll.Until(() => keepAlive.Successes > 200 && newConnections.Successes > 50, Long, "the load to get going");
        var durations = new List<double>();
        var clock = Stopwatch.StartNew();
        for (var i = 0; i < 100; i++)
        {
            var (code, stdout, stderr) = Upgrade(supervisor);
            Assert.That(code, Is.EqualTo(0), $"upgrade {i + 1}: {stdout}{stderr}");
            durations.Add(double.Parse(Regex.Match(stdout, @" in ([\d.]+)ms").Groups[1].Value, CultureInfo.InvariantCulture));
        }
        var wall = clock.Elapsed;
        var before = keepAlive.Successes + newConnections.Successes;
        Poll.Until(() => keepAlive.Successes + newConnections.Successes > before + 100, Long, "requests after the upgrades");
        keepAlive.Stop();
        newConnections.Stop();

        var status = Status(supervisor);
        var fdsAfter = OpenFds(supervisor.Pid);
        var rssAfter = Native.RssKiB(supervisor.Pid);
        durations.Sort();
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"100 upgrades in {wall.TotalSeconds:0.0}s under load: keep-alive {keepAlive.Successes} requests ({keepAlive.Failures.Count} failed), " +
            $"new connections {newConnections.Successes} ({newConnections.Failures.Count} failed); upgrade request to new image serving: " +
            $"median {durations[50]}ms, p90 {durations[90]}ms, max {durations[^1]}ms; supervisor fds {fdsBefore} -> {fdsAfter}, RSS {rssBefore} -> {rssAfter} KiB"));
        Assert.That(keepAlive.Failures, Is.Empty);
        Assert.That(newConnections.Failures, Is.Empty);
        Assert.That(status.GetProperty("upgrades").GetInt32(), Is.EqualTo(101));
        Assert.That(status.GetProperty("pid").GetInt32(), Is.EqualTo(supervisor.Pid));
        Assert.That(status.GetProperty("serving").GetProperty("pid").GetInt32(), Is.EqualTo(child), "the same child serves");
        Assert.That(status.GetProperty("serving").GetProperty("generation").GetInt32(), Is.EqualTo(1));
        Assert.That(Native.IsAlive(child), Is.True);
        Assert.That(supervisor.Lines.Count(l => l.Contains("generation 1 (pid") && l.Contains("exited")), Is.Zero, "the child was never stopped");
        Assert.That(fdsAfter, Is.EqualTo(fdsBefore), "fd count flat");
        Assert.That(rssAfter, Is.LessThan(rssBefore + 1024), "RSS flat (within 1 MiB)");
        Assert.That(rssAfter, Is.LessThan(12 * 1024), "RSS within 12 MiB");

        // The handoff connection crossed every exec: a reload still drains generation 1 through it, which then
        // exits on its own (status 0) rather than at the stop timeout.
        Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]).Code, Is.EqualTo(0));
        supervisor.WaitForLine($@"generation 1 \(pid {child}\) exited with exit code 0", Long);
    }

    [Test]
    public void Children_output_written_across_upgrades_is_relayed_whole_and_in_order()
    {
        using var supervisor = SupervisorProcess.Start(["--ready", "delay:100ms", "--", "/bin/sh", "-c",
            "i=0; while [ $i -lt 100000 ]; do echo \"line $i\"; i=$((i+1)); done; exec sleep 600"]);
        supervisor.WaitForReady(1);
        for (var i = 0; i < 20; i++) Assert.That(Upgrade(supervisor).Code, Is.EqualTo(0));
        supervisor.WaitForLine("^line 99999$", Long);
        var numbers = supervisor.Lines.Where(l => l.StartsWith("line ", StringComparison.Ordinal)).Select(l => int.Parse(l[5..], CultureInfo.InvariantCulture)).ToList();
        Assert.That(numbers, Is.EqualTo(Enumerable.Range(0, 100000)), "every line once, in order");
    }

    [Test]
    public void Output_of_generations_that_drain_on_long_after_their_reload_still_flows_after_an_upgrade()
    {
        // Five reloads of a child that ignores SIGTERM: generations 1 to 5 drain (for a minute), 6 serves. The loop
        // keeps the last output of the newest four only, yet every pipe still written to must cross the exec.
        using var supervisor = SupervisorProcess.Start(["--ready", "delay:100ms", "--stop-timeout", "60s", "--", "/bin/sh", "-c",
            "trap '' TERM; while true; do echo \"tick of $GSUPERVISOR_GENERATION\"; sleep 0.05; done"]);
        supervisor.WaitForReady(1);
        for (var generation = 2; generation <= 6; generation++)
        {
            supervisor.Signal(SIGUSR2);
            supervisor.WaitForLine($"reload succeeded: generation {generation} ", Long);
        }
        Assert.That(Upgrade(supervisor).Code, Is.EqualTo(0));
        var upgraded = supervisor.LineCount;
        supervisor.WaitForLine("^tick of 1$", Long, after: upgraded);
        Assert.That(supervisor.Lines.Skip(upgraded).Any(l => l.Contains("generation 1 (pid") && l.Contains("exited")), Is.False,
            "generation 1 lives on, not ended by a broken pipe");
        supervisor.Signal(SIGTERM);
        foreach (var pid in supervisor.ChildPids) Native.Kill(-pid, SIGKILL); // rather than wait out the minute of drain
        Assert.That(supervisor.WaitForExit(Long), Is.EqualTo(0));
    }

    [Test]
    public void A_broken_missing_or_unexecutable_binary_is_refused_and_the_running_one_serves_on()
    {
        using var dir = new TempDirectory();
        var binary = CopyInstalled(dir);
        var good = dir.File("lib/good-gsupervisor"); // a verb needs libMonoPosixHelper.so beside it
        File.Copy(binary, good);
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild], program: binary);
        var port = supervisor.WaitForPort();
        var child = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);

        WriteScript(binary, "echo 'this is not gsupervisor' >&2; exit 3");
        var (code, _, stderr) = Upgrade(supervisor, good);
        Assert.That(code, Is.EqualTo(1), stderr);
        Assert.That(stderr, Does.Contain($"upgrade refused: {binary} failed its upgrade check with exit code 3: this is not gsupervisor"));

        File.SetUnixFileMode(binary, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        (code, _, stderr) = Upgrade(supervisor, good);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain($"upgrade refused: cannot run {binary}: Permission denied"));

        File.Delete(binary);
        (code, _, stderr) = Upgrade(supervisor, good);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain($"upgrade refused: cannot run {binary}: No such file or directory"));

        WriteScript(binary, "exit 0");
        (code, _, stderr) = Upgrade(supervisor, good);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain("is not a gsupervisor that can take over"));

        // The old image answers status, serves, and reloads; nothing was upgraded.
        var status = Status(supervisor, good);
        Assert.That(status.GetProperty("upgrades").GetInt32(), Is.Zero);
        Assert.That(status.GetProperty("lastUpgrade").GetProperty("succeeded").GetBoolean(), Is.False);
        Assert.That(status.GetProperty("serving").GetProperty("pid").GetInt32(), Is.EqualTo(child));
        Assert.That(Http.Get(port), Is.EqualTo($"pid={child} gen=1"));
        Assert.That(supervisor.Lines.Count(l => l.Contains("upgrade refused:")), Is.EqualTo(4));

        // Put right, the upgrade goes through.
        ReplaceFile(good, binary);
        Assert.That(Upgrade(supervisor, good).Code, Is.EqualTo(0));
        Assert.That(Status(supervisor, good).GetProperty("upgrades").GetInt32(), Is.EqualTo(1));
    }

    [Test]
    public void A_signal_and_a_child_death_during_the_check_and_a_signal_during_the_exec_are_all_handled()
    {
        using var dir = new TempDirectory();
        var (binary, real) = CopyInstalledWithSpare(dir);
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild], program: binary);
        var port = supervisor.WaitForPort();
        var child = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);

        // The new "binary" takes its time: 3 s in its check, 2 s before it execs the real one in place. Bash, as it
        // keeps the signal mask it is started with (dash clears it, and SIGUSR2's default action would end it).
        var checking = dir.File("checking");
        var execing = dir.File("execing");
        WriteScript(binary, $"""
            if [ "$1" = --upgrade-check ]; then touch {checking}; sleep 3; else touch {execing}; sleep 2; fi
            exec {real} "$@"
            """, shell: "/bin/bash");
        var upgrade = Task.Run(() => Upgrade(supervisor, real));
        Poll.Until(() => File.Exists(checking), Long, "the upgrade check to run");
        supervisor.Signal(SIGUSR2); // waits until the upgrade is done
        Assert.That(Native.Kill(child, SIGKILL), Is.EqualTo(0)); // handled at once: restarted
        supervisor.WaitForLine(@"generation 2 \(pid \d+\) started to replace a crashed one", Long);
        Poll.Until(() => File.Exists(execing), Long, "the exec");
        // Between the exec and the new image: only the shell runs, with the supervisor's signals blocked.
        supervisor.Signal(SIGUSR2);
        var (code, stdout, stderr) = upgrade.Result;
        Assert.That(code, Is.EqualTo(0), stdout + stderr);
        Assert.That(stdout, Does.Contain($"pid {supervisor.Pid}"));

        // Both SIGUSR2s become reloads after the upgrade: the one from the check waited in the loop, the one from
        // the exec in the kernel. They may collapse into one queued behind the other, so: generation 4 serves.
        supervisor.WaitForLine("reload succeeded: generation 4 ", Long);
        var upgraded = supervisor.Lines.ToList().FindIndex(l => l.Contains("upgraded: gsupervisor"));
        var firstReload = supervisor.Lines.ToList().FindIndex(l => l.Contains("reload requested (SIGUSR2"));
        Assert.That(upgraded, Is.GreaterThan(0));
        Assert.That(firstReload, Is.GreaterThan(upgraded), "the signals were handled after the upgrade");
        Assert.That(supervisor.Lines.Count(l => l.Contains("reload requested (SIGUSR2)")), Is.EqualTo(2), "no signal lost");
        Assert.That(Http.UntilGeneration(() => Http.Get(port), 4), Does.EndWith("gen=4"));
        Assert.That(supervisor.HasExited, Is.False);
    }

    [Test]
    public void When_the_exec_itself_fails_the_old_image_resumes_with_nothing_leaked()
    {
        using var dir = new TempDirectory();
        var (binary, real) = CopyInstalledWithSpare(dir);
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild], program: binary);
        var port = supervisor.WaitForPort();
        var child = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        var fds = OpenFds(supervisor.Pid);

        // The check passes (the real binary answers it), and meanwhile the file is made unexecutable, so the exec fails.
        var checking = dir.File("checking");
        var proceed = dir.File("proceed");
        WriteScript(binary, $"""
            touch {checking}; while [ ! -e {proceed} ]; do sleep 0.05; done
            exec {real} "$@"
            """);
        var upgrade = Task.Run(() => Upgrade(supervisor, real));
        Poll.Until(() => File.Exists(checking), Long, "the upgrade check to run");
        File.SetUnixFileMode(binary, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        File.WriteAllText(proceed, "");
        var (code, _, stderr) = upgrade.Result;
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain($"upgrade refused: exec {binary} failed: Permission denied"));

        Assert.That(Http.Get(port), Is.EqualTo($"pid={child} gen=1"), "the old image serves on");
        Assert.That(OpenFds(supervisor.Pid), Is.EqualTo(fds), "the state memfd is closed");
        // The fds that would have crossed are close-on-exec again: the next generation gets only its own.
        Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath], program: real).Code, Is.EqualTo(0));
        var second = supervisor.WaitForGenerationPid(2);
        // (Sockets by inode: the child's own pipes may be copies of its stdout, whose read end is the supervisor's.)
        var shared = FdTargets(second, from: 3).Intersect(FdTargets(supervisor.Pid, from: 0)).Where(t => t.StartsWith("socket:", StringComparison.Ordinal));
        Assert.That(shared, Is.EqualTo(FdTargets(second, from: 3, to: 3)), "of the supervisor's sockets, generation 2 has only the listener");
        Assert.That(FdTargets(second, from: 0).Where(t => t.StartsWith("/memfd:gsupervisor", StringComparison.Ordinal)), Is.Empty, "no upgrade state (the runtime has memfds of its own)");
        Assert.That(Status(supervisor, real).GetProperty("upgrades").GetInt32(), Is.Zero);
    }

    [Test]
    public void A_new_image_that_passes_its_check_but_cannot_take_over_returns_to_the_earlier_one()
    {
        using var dir = new TempDirectory();
        var binary = CopyInstalled(dir);
        // A complete copy answers the check; the exec then goes to one without its exec helper (as if the package
        // had lost it since), or without libMonoPosixHelper.so: the new image fails at start, as it would.
        var checker = Path.Combine(dir.Path, "checker");
        var noHelper = Path.Combine(dir.Path, "no-helper");
        var noLibrary = Path.Combine(dir.Path, "no-library");
        foreach (var (target, files) in new[] { (checker, Files), (noHelper, Files[..1].Append(Files[2]).ToArray()), (noLibrary, Files[..2]) })
        {
            Directory.CreateDirectory(target);
            foreach (var file in files) File.Copy(Path.Combine(dir.File("lib"), file), Path.Combine(target, file));
        }
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild], program: binary);
        var port = supervisor.WaitForPort();
        var child = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        var verb = Path.Combine(checker, "gsupervisor");

        foreach (var (broken, missing) in new[] { (noHelper, "gsupervisor-exec"), (noLibrary, "libMonoPosixHelper.so") })
        {
            WriteScript(binary, $"""
                if [ "$1" = --upgrade-check ]; then exec {verb} "$@"; fi
                exec {broken}/gsupervisor "$@"
                """, shell: "/bin/bash");
            var (code, _, stderr) = Upgrade(supervisor, verb);
            Assert.That(code, Is.EqualTo(1), stderr);
            Assert.That(stderr, Does.Contain("upgrade refused: the new binary could not take over and returned to this one: ").And.Contain(missing));
            Assert.That(supervisor.HasExited, Is.False);
            Assert.That(Http.Get(port), Is.EqualTo($"pid={child} gen=1"), "the same child serves");
            var status = Status(supervisor, verb);
            Assert.That(status.GetProperty("upgrades").GetInt32(), Is.Zero);
            Assert.That(status.GetProperty("executable").GetString(), Is.EqualTo(binary));
        }

        // The earlier image goes on as before: a reload, then an upgrade that works.
        Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath], program: verb).Code, Is.EqualTo(0));
        ReplaceFile(verb, binary);
        Assert.That(Upgrade(supervisor, verb).Code, Is.EqualTo(0));
        Assert.That(Status(supervisor, verb).GetProperty("upgrades").GetInt32(), Is.EqualTo(1));
    }

    [Test]
    public void An_upgrade_while_a_generation_drains_keeps_that_drains_deadline()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--stop-timeout", "4s", "--", Paths.TestChild, "--ignore-term"]);
        supervisor.WaitForReady(1);
        supervisor.Signal(SIGUSR2);
        var stopped = Timestamp(supervisor.WaitForLine(@"^(\S+ \S+) INF generation 2 \(pid \d+\) is ready .*; stopping generation 1"));
        Poll.Until(() => (DateTime.Now - stopped).TotalSeconds > 1.5, Long, "half of the drain to pass");
        Assert.That(Upgrade(supervisor).Code, Is.EqualTo(0));
        var killed = Timestamp(supervisor.WaitForLine(@"^(\S+ \S+) WRN generation 1 \(pid \d+\) did not exit within 4s of SIGTERM; sending SIGKILL", Long));
        var drained = (killed - stopped).TotalSeconds;
        TestContext.Out.WriteLine($"SIGKILL {drained:0.000}s after the stop signal, across an upgrade");
        Assert.That(drained, Is.InRange(3.95, 4.5), "the stop deadline crossed the exec unchanged");
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) exited with signal SIGKILL", Long);
    }

    private static DateTime Timestamp(Match line) =>
        DateTime.ParseExact(line.Groups[1].Value, "yyyy-MM-dd HH:mm:ss.fff", CultureInfo.InvariantCulture);

    [Test]
    public void An_upgrade_asked_for_during_a_reload_waits_for_it_then_goes_ahead()
    {
        using var dir = new TempDirectory();
        var argsFile = dir.File("args");
        File.WriteAllText(argsFile, "");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild, "--args-file", argsFile]);
        supervisor.WaitForReady(1);
        File.WriteAllText(argsFile, "--ready-after 1500");
        Assert.That(Verb.Run(["reload", "--control", supervisor.ControlPath]).Code, Is.EqualTo(0));
        var (code, stdout, stderr) = Upgrade(supervisor);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.StartWith("upgraded: "));
        var waited = supervisor.Lines.ToList().FindIndex(l => l.Contains("the upgrade waits for the reload under way (generation 2"));
        var reloaded = supervisor.Lines.ToList().FindIndex(l => l.Contains("reload succeeded: generation 2"));
        var exec = supervisor.Lines.ToList().FindIndex(l => l.Contains(" INF exec "));
        Assert.That(waited, Is.GreaterThan(0));
        Assert.That(reloaded, Is.GreaterThan(waited));
        Assert.That(exec, Is.GreaterThan(reloaded));
    }

    [Test]
    public void Upgrades_to_the_next_version_and_back_with_a_state_field_only_one_of_them_knows()
    {
        var next = Environment.GetEnvironmentVariable("GSUPERVISOR_NEXT") is { Length: > 0 } n ? n : Path.Combine(Paths.Root, "out/next");
        if (!File.Exists(Path.Combine(next, "gsupervisor")))
            Assert.Fail($"{next}/gsupervisor is missing: run `make test` (or `make next` before `dotnet test`)");
        using var dir = new TempDirectory();
        var binary = CopyInstalled(dir);
        var lib = Path.GetDirectoryName(binary)!;
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.HelloKestrel], program: binary);
        var port = supervisor.WaitForPort();
        var child = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        using var load = new KeepAliveLoad(port, connections: 4);
        Poll.Until(() => load.Successes > 100, Long, "the load to get going");

        var (_, ours) = Command.Run(binary, ["--version"]);
        var (_, theirs) = Command.Run(Path.Combine(next, "gsupervisor"), ["--version"]);
        Assert.That(theirs.Trim(), Is.Not.EqualTo(ours.Trim()), "make next builds another version");
        foreach (var file in Files) ReplaceFile(Path.Combine(next, file), Path.Combine(lib, file));
        var (code, stdout, stderr) = Upgrade(supervisor);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain($"{ours.Trim()} -> {theirs.Trim()["gsupervisor ".Length..]}"));
        Assert.That(Status(supervisor).GetProperty("version").GetString(), Is.EqualTo(theirs.Trim()["gsupervisor ".Length..]));

        foreach (var file in Files) ReplaceFile(Paths.Installed($"usr/lib/gsupervisor/{file}"), Path.Combine(lib, file));
        (code, stdout, stderr) = Upgrade(supervisor);
        Assert.That(code, Is.EqualTo(0), stderr);
        var status = Status(supervisor);
        Assert.That(status.GetProperty("version").GetString(), Is.EqualTo(ours.Trim()["gsupervisor ".Length..]));
        Assert.That(status.GetProperty("upgrades").GetInt32(), Is.EqualTo(2));
        Assert.That(status.GetProperty("executable").GetString(), Is.EqualTo(binary));
        Assert.That(status.GetProperty("serving").GetProperty("pid").GetInt32(), Is.EqualTo(child));

        // What the images carried works: a reload drains generation 1 over its handoff connection, under load.
        Reloads.Repeatedly(supervisor, 1, () => load.Successes);
        load.Stop();
        Assert.That(load.Failures, Is.Empty);
    }

    [Test]
    public void The_state_of_release_0_1_0_is_read_with_fields_added_and_left_out_and_garbage_is_refused()
    {
        var fixture = File.ReadAllText(Path.Combine(Paths.Root, "tests/GSupervisor.Tests/Fixtures/upgrade-state-0.1.0.json"));
        string[] arguments = ["--upgrade-check", "--listen", "web=127.0.0.1:0", "--stop-timeout", "60s", "--", Paths.TestChild];
        Assert.That(CheckWith(arguments, fixture), Does.StartWith("gsupervisor-upgrade-check: ok version="));

        var document = System.Text.Json.Nodes.JsonNode.Parse(fixture)!.AsObject();
        document["addedByALaterRelease"] = new System.Text.Json.Nodes.JsonObject { ["anything"] = 1 };
        document["machine"]!.AsObject()["alsoAdded"] = "x";
        document.Remove("interrupts");
        document.Remove("outputs");
        Assert.That(CheckWith(arguments, document.ToJsonString()), Does.StartWith("gsupervisor-upgrade-check: ok"));

        Assert.That(CheckWith(arguments, "not json"), Does.Contain("cannot take over this state: the upgrade state is not valid JSON"));
        document["format"] = 99;
        Assert.That(CheckWith(arguments, document.ToJsonString()), Does.Contain("has format 99"));
        document["format"] = 1;
        document["machine"]!.AsObject()["phase"] = "Dancing";
        Assert.That(CheckWith(arguments, document.ToJsonString()), Does.Contain("unknown phase 'Dancing'"));
        Assert.That(CheckWith(["--upgrade-check", "--listen", "nonsense"], fixture), Does.Contain("does not accept the running supervisor's command line"));
    }

    private static string CheckWith(string[] arguments, string state)
    {
        var info = new ProcessStartInfo(Paths.Supervisor) { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        process.StandardInput.Write(state);
        process.StandardInput.Close();
        var output = process.StandardOutput.ReadToEnd();
        Assert.That(process.WaitForExit(TimeSpan.FromSeconds(30)), Is.True);
        Assert.That(process.ExitCode, Is.EqualTo(output.Contains(": ok ") ? 0 : output.Contains("command line") ? 64 : 70), output);
        return output;
    }

    [Test]
    public void Upgrade_all_upgrades_every_daemon_of_the_binary_and_stop_all_stops_them()
    {
        using var first = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild]);
        using var second = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild]);
        first.WaitForReady(1);
        second.WaitForReady(1);
        var (code, stdout, stderr) = Verb.Run(["upgrade", "--all"]);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain($"pid {first.Pid}: upgraded: ").And.Contain($"pid {second.Pid}: upgraded: "));
        Assert.That(Status(first).GetProperty("upgrades").GetInt32(), Is.EqualTo(1));
        Assert.That(Verb.Run(["upgrade", "--all", "--control", first.ControlPath]).Code, Is.EqualTo(64), "--all finds the sockets itself");

        (code, stdout, stderr) = Verb.Run(["stop", "--all"]);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(first.WaitForExit(Long), Is.EqualTo(0));
        Assert.That(second.WaitForExit(Long), Is.EqualTo(0));
    }

    [Test]
    public void Upgrade_all_as_root_reaches_a_daemon_that_runs_as_another_user()
    {
        Assert.That(Native.GetEffectiveUserId(), Is.EqualTo(0u), "make test runs as root");
        using var dir = new TempDirectory();
        File.SetUnixFileMode(dir.Path, (UnixFileMode)0b111_101_101); // the copy must be reachable by nobody
        var binary = CopyInstalled(dir);
        var run = dir.File("run");
        Directory.CreateDirectory(run);
        Assert.That(Command.Run("chown", ["65534:65534", run]).Code, Is.EqualTo(0));
        var control = Path.Combine(run, "control.sock");
        using var supervisor = SupervisorProcess.Start(["--control", control, "--ready", "delay:100ms", "--", "/bin/sleep", "600"],
            program: "/usr/bin/setpriv", prefix: ["--reuid=65534", "--regid=65534", "--clear-groups"], binary: binary);
        supervisor.WaitForReady(1);

        var (code, stdout, stderr) = Verb.Run(["upgrade", "--all"], program: binary);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain($"pid {supervisor.Pid}: upgraded: "));
        Assert.That(File.ReadAllLines($"/proc/{supervisor.Pid}/status").Single(l => l.StartsWith("Uid:", StringComparison.Ordinal)), Does.Contain("65534"));
        (code, _, stderr) = Verb.Run(["stop", "--all"], program: binary);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(supervisor.WaitForExit(Long), Is.EqualTo(0));
    }

    [Test]
    public void As_PID_1_of_a_container_it_upgrades_in_place_and_stays_PID_1()
    {
        string[] unshare = Native.GetEffectiveUserId() == 0
            ? ["--pid", "--fork", "--mount-proc"]
            : ["--user", "--map-root-user", "--pid", "--fork", "--mount-proc"];
        using var wrapper = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild],
            program: "/usr/bin/unshare", prefix: [.. unshare, "--kill-child"], childPidsAreOurs: false);
        var port = wrapper.WaitForPort();
        wrapper.WaitForReady(1);
        var answer = Http.Get(port);
        var (code, stdout, stderr) = Upgrade(wrapper);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain(", pid 1, in "));
        wrapper.WaitForLine(@"\(pid 1\) took over in place");
        Assert.That(Http.Get(port), Is.EqualTo(answer), "the same child answers");
        var status = JsonDocument.Parse(Verb.Run(["status", "--json", "--control", wrapper.ControlPath]).Stdout).RootElement;
        Assert.That(status.GetProperty("pid").GetInt32(), Is.EqualTo(1));
        Assert.That(status.GetProperty("upgrades").GetInt32(), Is.EqualTo(1));

        // Still PID 1 with a working loop: a reload, then SIGTERM ends it with status 0.
        Assert.That(Verb.Run(["reload", "--wait", "--control", wrapper.ControlPath]).Code, Is.EqualTo(0));
        Assert.That(Verb.Run(["stop", "--control", wrapper.ControlPath]).Code, Is.EqualTo(0));
        Assert.That(wrapper.WaitForExit(Long), Is.EqualTo(0));
    }
}
