// Overview
// --------
// A real systemd for the tests of the packaged units: a copy of a Debian 12 root (tests/systemd/make-root.sh,
// `make systemd-root`) booted with systemd as PID 1 inside systemd-nspawn (tests/systemd/boot.sh), its own
// network namespace with only loopback. Commands run inside with nsenter into all of the container's
// namespaces. Disposing halts the container (SIGTERM to nspawn) and removes the copy.

using System.Diagnostics;

namespace GSupervisor.Tests.Integration;

internal sealed class SystemdContainer : IDisposable
{
    private static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(2);
    private readonly TempDirectory _dir;
    private readonly Process _nspawn;
    private readonly List<string> _console = [];
    private int _leader;

    /// <summary>The container's root directory, as the host sees it: files put here appear inside.</summary>
    public string Root { get; }

    private SystemdContainer(TempDirectory dir, string root, Process nspawn)
    {
        _dir = dir;
        Root = root;
        _nspawn = nspawn;
    }

    /// <summary>The root that `make systemd-root` made (`make test` sets GSUPERVISOR_SYSTEMD_ROOT).</summary>
    private static string Template
    {
        get
        {
            var dir = Environment.GetEnvironmentVariable("GSUPERVISOR_SYSTEMD_ROOT") is { Length: > 0 } d ? d : Path.Combine(Paths.Root, "out/systemd-root");
            if (!File.Exists(Path.Combine(dir, ".complete")))
                Assert.Fail($"{dir} has no Debian root with systemd: run `make test` (or `make systemd-root`), which makes it with debootstrap");
            return Path.Combine(dir, "root");
        }
    }

    /// <summary>Boots a fresh copy of the template and waits until systemd reports the system running.</summary>
    public static SystemdContainer Boot(params string[] nspawnOptions)
    {
        Assert.That(Native.GetEffectiveUserId(), Is.EqualTo(0u), "booting a container needs root (CI runs as root)");
        var template = Template;
        var dir = new TempDirectory();
        var root = dir.File("root");
        Process nspawn;
        try
        {
            Run("cp", ["-a", template, root]);
            // No console login on a console nobody reads.
            foreach (var getty in Directory.GetFiles(Path.Combine(root, "etc/systemd/system/getty.target.wants")))
                File.Delete(getty);
            var info = new ProcessStartInfo(Path.Combine(Paths.Root, "tests/systemd/boot.sh"))
            {
                RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
            };
            info.ArgumentList.Add(root);
            foreach (var option in nspawnOptions) info.ArgumentList.Add(option);
            nspawn = Process.Start(info)!;
        }
        catch
        {
            dir.Dispose();
            throw;
        }
        var container = new SystemdContainer(dir, root, nspawn);
        try
        {
            container._nspawn.OutputDataReceived += (_, e) => container.OnConsole(e.Data);
            container._nspawn.ErrorDataReceived += (_, e) => container.OnConsole(e.Data);
            container._nspawn.BeginOutputReadLine();
            container._nspawn.BeginErrorReadLine();
            // boot.sh execs unshare, which execs systemd-nspawn: the same pid. Its child is the container's PID 1.
            Poll.Until(() => (container._leader = InitOf(container._nspawn.Id)) > 0 || container._nspawn.HasExited, BootTimeout, "systemd to start in the container");
            Assert.That(container._nspawn.HasExited, Is.False, $"systemd-nspawn exited:\n{container.Console}");
            // Until systemd has its control socket up, systemctl cannot connect; then --wait blocks until booted.
            var state = "";
            Poll.Until(() => !(state = container.Exec("systemctl", "is-system-running", "--wait").Output).Contains("Failed to connect to bus"),
                BootTimeout, "systemd's control socket in the container");
            Assert.That(state.Trim(), Is.EqualTo("running"), $"the container's systemd:\n{container.Exec("systemctl", "--failed", "--no-pager").Output}");
            return container;
        }
        catch
        {
            container.Dispose();
            throw;
        }
    }

    private void OnConsole(string? line)
    {
        if (line is null) return;
        lock (_console) _console.Add(line);
    }

    public string Console
    {
        get { lock (_console) return string.Join("\n", _console); }
    }

    /// <summary>The pid (as the host sees it) of the child of <paramref name="nspawn"/> that runs systemd, or 0.</summary>
    private static int InitOf(int nspawn)
    {
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (int.Parse(fields[1]) == nspawn && File.ReadAllText(Path.Combine(dir, "comm")).Trim() == "systemd") return pid;
            }
            catch (IOException)
            {
                // gone meanwhile
            }
        }
        return 0;
    }

    /// <summary>Runs a command inside the container (all its namespaces, a plain environment); returns its exit code and output.</summary>
    public (int Code, string Output) Exec(params string[] command) =>
        Run("nsenter", ["-t", _leader.ToString(), "-a", "env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", .. command], check: false);

    /// <summary>A command that must succeed inside the container; returns its output.</summary>
    public string Must(params string[] command)
    {
        var (code, output) = Exec(command);
        Assert.That(code, Is.EqualTo(0), $"{string.Join(' ', command)} in the container:\n{output}");
        return output;
    }

    /// <summary>A unit's properties, as `systemctl show -p`.</summary>
    public Dictionary<string, string> Show(string unit, params string[] properties) =>
        Must(["systemctl", "show", unit, .. properties.SelectMany(p => new[] { "-p", p })])
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split('=', 2)).ToDictionary(p => p[0], p => p[1]);

    /// <summary>One GET from inside the container (its loopback); returns the body.</summary>
    public string Get(string url) => Must("curl", "--silent", "--show-error", "--fail", "--max-time", "60", url).Trim();

    private static (int Code, string Output) Run(string program, IEnumerable<string> arguments, bool check = true)
    {
        var info = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            process.Kill(true);
            Assert.Fail($"{program} {string.Join(' ', arguments)} did not finish within 5 minutes");
        }
        var output = stdout.Result + stderr.Result;
        if (check) Assert.That(process.ExitCode, Is.EqualTo(0), $"{program} {string.Join(' ', arguments)}:\n{output}");
        return (process.ExitCode, output);
    }

    public void Dispose()
    {
        var exited = true;
        try
        {
            if (!_nspawn.HasExited)
            {
                Native.Kill(_nspawn.Id, 15); // nspawn asks the container's systemd to halt
                if (!_nspawn.WaitForExit(TimeSpan.FromSeconds(60)))
                {
                    Native.Kill(_nspawn.Id, 15); // a second SIGTERM ends it at once
                    if (!_nspawn.WaitForExit(TimeSpan.FromSeconds(15))) _nspawn.Kill(true);
                }
            }
            exited = _nspawn.WaitForExit(TimeSpan.FromSeconds(30));
            if (!exited) Assert.Fail($"systemd-nspawn (pid {_nspawn.Id}) did not exit after SIGKILL; its root is left in {Root}");
        }
        finally
        {
            _nspawn.Dispose();
            if (exited) _dir.Dispose(); // never delete a root a running container still has mounted
        }
    }
}
