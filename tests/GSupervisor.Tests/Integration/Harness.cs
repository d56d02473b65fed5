// Overview
// --------
// What the integration tests stand on: paths of the built binaries, a handle on a running gsupervisor
// (its stderr lines, signals, exit) that kills everything it started when disposed, a poll with a
// deadline in place of sleeps, and a load client that never retries and counts every failure.

using System.Diagnostics;
using System.Net.Sockets;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;

namespace GSupervisor.Tests.Integration;

internal static partial class Native
{
    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    private static partial int Socket(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "bind", SetLastError = true)]
    private static unsafe partial int Bind(int fd, byte* address, int length);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);

    /// <summary>Leaves a stale Unix socket file: bound, closed, never unlinked (as after a crash).</summary>
    public static unsafe void MakeStaleUnixSocket(string path)
    {
        var address = new byte[110];
        address[0] = 1; // AF_UNIX
        Encoding.UTF8.GetBytes(path).CopyTo(address, 2);
        var fd = Socket(1, 1, 0);
        fixed (byte* a = address)
            Assert.That(Bind(fd, a, address.Length), Is.EqualTo(0), "bind the stale socket");
        Close(fd);
    }

    [LibraryImport("libc", EntryPoint = "geteuid")]
    public static partial uint GetEffectiveUserId();

    /// <summary>The start time of process <paramref name="pid"/> (clock ticks since boot), or null if it is gone.</summary>
    public static ulong? StartTime(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            // Fields after the command (which may hold spaces) start at state, field 3; start time is field 22.
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return ulong.Parse(fields[22 - 3]);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>The environment process <paramref name="pid"/> was started with.</summary>
    public static Dictionary<string, string> Environ(int pid) =>
        File.ReadAllText($"/proc/{pid}/environ").Split('\0', StringSplitOptions.RemoveEmptyEntries)
            .Select(e => e.Split('=', 2)).ToDictionary(p => p[0], p => p.Length > 1 ? p[1] : "");

    public static long RssKiB(int pid) =>
        long.Parse(Regex.Match(File.ReadAllText($"/proc/{pid}/status"), @"VmRSS:\s+(\d+) kB").Groups[1].Value);

    /// <summary>Whether process <paramref name="pid"/> has a handler for <paramref name="signal"/> (SigCgt).</summary>
    public static bool Catches(int pid, int signal)
    {
        var caught = File.ReadAllLines($"/proc/{pid}/status").Single(l => l.StartsWith("SigCgt:", StringComparison.Ordinal));
        return (Convert.ToUInt64(caught.Split(':')[1].Trim(), 16) & (1UL << (signal - 1))) != 0;
    }

    public static bool IsAlive(int pid)
    {
        if (Kill(pid, 0) != 0) return false;
        // A zombie still answers kill(0); it is gone for our purposes only once reaped, so look at its state.
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }
}

internal static class Paths
{
    private static string Metadata(string key) =>
        typeof(Paths).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == key).Value!;

    public static string Root => Metadata("RepositoryRoot");
    private static string Configuration => Metadata("Configuration");

    /// <summary>
    /// The installed tree under test: what the .deb holds (`make deb`; `make test` builds it and sets
    /// GSUPERVISOR_ROOT). The integration tests drive its native binary, never a JIT build.
    /// </summary>
    public static string InstalledRoot { get; } = Environment.GetEnvironmentVariable("GSUPERVISOR_ROOT") is { Length: > 0 } root
        ? root : Path.Combine(Root, "out/deb/root");

    public static string Supervisor => Installed("usr/bin/gsupervisor");

    /// <summary>The package the installed tree came from (`make deb`; `make test` sets GSUPERVISOR_DEB).</summary>
    public static string Deb => Environment.GetEnvironmentVariable("GSUPERVISOR_DEB") is { Length: > 0 } deb
        ? deb : Directory.GetFiles(Path.Combine(Root, "out"), "gsupervisor_*.deb").Single();

    /// <summary>The NuGet packages of `make pack` (`make test` builds them and sets GSUPERVISOR_PACKAGES).</summary>
    public static string Packages
    {
        get
        {
            var path = Environment.GetEnvironmentVariable("GSUPERVISOR_PACKAGES") is { Length: > 0 } p ? p : Path.Combine(Root, "out/packages");
            if (!File.Exists(Path.Combine(path, $"GSupervisor.AspNetCore.{Version}.nupkg")))
                Assert.Fail($"{path} holds no GSupervisor.AspNetCore.{Version}.nupkg: run `make test` (or `make pack` before `dotnet test`)");
            return path;
        }
    }

    /// <summary>The version the packages and the binary carry (Directory.Build.props).</summary>
    public static string Version => typeof(GSupervisor.Client.GSupervisorClient).Assembly.GetName().Version!.ToString(3);

    public static string Installed(string relative)
    {
        var path = Path.Combine(InstalledRoot, relative);
        if (!File.Exists(path))
            Assert.Fail($"{path} is missing: the integration tests drive the installed native binary; run `make test` (or `make deb` before `dotnet test`)");
        return path;
    }
    public static string TestChild => Path.Combine(Root, "tests/TestChild/bin", Configuration, "net10.0/TestChild");
    public static string EchoServer => Path.Combine(Root, "examples/EchoServer/bin", Configuration, "net10.0/EchoServer");
    public static string SystemdKestrel => Path.Combine(Root, "examples/SystemdKestrel/bin", Configuration, "net10.0/SystemdKestrel");
    public static string HelloKestrel => Path.Combine(Root, "examples/HelloKestrel/bin", Configuration, "net10.0/HelloKestrel");
    public static string StockWebApp => Path.Combine(Root, "tests/StockWebApp/bin", Configuration, "net10.0/StockWebApp");
    public static string StockConsoleApp => Path.Combine(Root, "tests/StockConsoleApp/bin", Configuration, "net10.0/StockConsoleApp");
}

/// <summary>Runs a program to its end, with a deadline, and returns its exit code and output.</summary>
internal static class Command
{
    /// <param name="environment">Added to this process's environment, or the whole environment with <paramref name="onlyThisEnvironment"/>.</param>
    public static (int Code, string Output) Run(string program, IEnumerable<string> arguments, string? workingDirectory = null,
        IDictionary<string, string>? environment = null, bool onlyThisEnvironment = false, TimeSpan? timeout = null)
    {
        var info = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = workingDirectory ?? Paths.Root };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        if (onlyThisEnvironment) info.Environment.Clear();
        if (environment is not null)
            foreach (var (k, v) in environment) info.Environment[k] = v;
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout ?? TimeSpan.FromMinutes(10)))
        {
            process.Kill(true);
            Assert.Fail($"{program} {string.Join(' ', arguments)} timed out");
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }
}

internal static class Reloads
{
    /// <summary>
    /// Waits until <paramref name="load"/> has <paramref name="warmUp"/> answers, reloads <paramref name="reloads"/>
    /// times under it, stops it and prints its figures; the caller asserts on its failures.
    /// </summary>
    public static void UnderLoad(SupervisorProcess supervisor, LoadBase load, int reloads, string what, long warmUp = 500)
    {
        Poll.Until(() => load.Successes > warmUp, TimeSpan.FromSeconds(60), "the load to get going");
        Repeatedly(supervisor, reloads, () => load.Successes);
        load.Stop();
        var connections = load is KeepAliveLoad keepAlive ? $" on {keepAlive.ConnectionsOpened} connections" : "";
        TestContext.Out.WriteLine($"{what}: {reloads} reloads, {load.Successes} requests{connections}, {load.Failures.Count} failed: {string.Join("; ", load.Failures.Distinct())}");
    }

    /// <summary>
    /// Reloads <paramref name="reloads"/> times by SIGUSR2, each time waiting until the new generation serves, the
    /// old one has exited and <paramref name="successes"/> has grown by 50 requests.
    /// </summary>
    public static void Repeatedly(SupervisorProcess supervisor, int reloads, Func<long> successes)
    {
        for (var generation = 2; generation <= reloads + 1; generation++)
        {
            var oldPid = int.Parse(supervisor.WaitForLine($@"generation {generation - 1} \(pid (\d+)\) started").Groups[1].Value);
            var before = successes();
            supervisor.Signal(12); // SIGUSR2
            supervisor.WaitForLine($@"reload succeeded: generation {generation} \(pid \d+\) is serving", TimeSpan.FromSeconds(60));
            supervisor.WaitForLine($@"generation {generation - 1} \(pid {oldPid}\) exited", TimeSpan.FromSeconds(60));
            Assert.That(Native.IsAlive(oldPid), Is.False, $"generation {generation - 1} is gone");
            Poll.Until(() => successes() > before + 50, TimeSpan.FromSeconds(60), $"requests after reload {generation - 1}");
        }
    }
}

internal static class Poll
{
    /// <summary>Polls <paramref name="condition"/> until it holds or the deadline passes.</summary>
    public static void Until(Func<bool> condition, TimeSpan timeout, string what)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            if (deadline.Elapsed > timeout) Assert.Fail($"timed out after {timeout.TotalSeconds}s waiting for {what}");
            Thread.Sleep(10); // poll interval of a wait bounded by the deadline above
        }
    }
}

/// <summary>A temporary directory for one test, removed afterwards.</summary>
internal sealed class TempDirectory : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("gsv-test-").FullName;
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { Directory.Delete(Path, true); }
        catch (IOException) { /* a socket file still bound by a dying process; the OS tmp cleaner gets it */ }
    }
}

/// <summary>A running gsupervisor. Dispose stops it and kills anything of its that survives.</summary>
internal sealed partial class SupervisorProcess : IDisposable
{
    private readonly Process _process;
    private readonly List<string> _lines = [];
    private readonly object _lock = new(); // Monitor.Wait/PulseAll need a plain object
    private readonly Dictionary<int, ulong> _childPids = []; // pid -> its start time, so a reused pid is never killed

    private readonly string _runtimeDirectory;
    private readonly bool _childPidsAreOurs;

    private SupervisorProcess(Process process, string runtimeDirectory, bool childPidsAreOurs)
    {
        _process = process;
        _runtimeDirectory = runtimeDirectory;
        _childPidsAreOurs = childPidsAreOurs;
    }

    public int Pid => _process.Id;

    /// <summary>The daemon's default control socket: each test's supervisor gets an XDG_RUNTIME_DIR of its own.</summary>
    public string ControlPath => System.IO.Path.Combine(_runtimeDirectory, "gsupervisor", "control.sock");

    /// <param name="program">The program to start: a copy of gsupervisor, or with <paramref name="prefix"/> a wrapper (unshare, setpriv).</param>
    /// <param name="binary">With a wrapper: the gsupervisor it runs, when not the installed one.</param>
    public static SupervisorProcess Start(IEnumerable<string> arguments, string? workingDirectory = null,
        IDictionary<string, string>? environment = null, string? program = null, IEnumerable<string>? prefix = null,
        bool childPidsAreOurs = true, string? binary = null)
    {
        var info = new ProcessStartInfo(program ?? Paths.Supervisor)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? System.IO.Path.GetTempPath(),
        };
        foreach (var a in prefix ?? []) info.ArgumentList.Add(a);
        if (program is not null && prefix is not null) info.ArgumentList.Add(binary ?? Paths.Supervisor);
        foreach (var a in arguments) info.ArgumentList.Add(a);
        var runtimeDirectory = Directory.CreateTempSubdirectory("gsv-run-").FullName;
        info.Environment["XDG_RUNTIME_DIR"] = runtimeDirectory;
        info.Environment.Remove("RUNTIME_DIRECTORY");
        if (environment is not null) foreach (var (k, v) in environment) info.Environment[k] = v;
        var process = Process.Start(info)!;
        var supervisor = new SupervisorProcess(process, runtimeDirectory, childPidsAreOurs);
        process.ErrorDataReceived += (_, e) => supervisor.OnLine(e.Data);
        process.OutputDataReceived += (_, e) => supervisor.OnLine(e.Data);
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        return supervisor;
    }

    [GeneratedRegex(@"generation (\d+) \(pid (\d+)\) started")]
    private static partial Regex StartedLine();

    private void OnLine(string? line)
    {
        if (line is null) return;
        TestContext.Progress.WriteLine("  | " + line);
        lock (_lock)
        {
            _lines.Add(line);
            if (StartedLine().Match(line) is { Success: true } m && _childPidsAreOurs && Native.StartTime(int.Parse(m.Groups[2].Value)) is { } started)
                _childPids[int.Parse(m.Groups[2].Value)] = started;
            Monitor.PulseAll(_lock);
        }
    }

    public IReadOnlyList<string> Lines
    {
        get { lock (_lock) return _lines.ToList(); }
    }

    public string Output => string.Join("\n", Lines);

    /// <summary>Waits for the first line (from <paramref name="after"/> on) matching <paramref name="pattern"/>.</summary>
    public Match WaitForLine(string pattern, TimeSpan? timeout = null, int after = 0)
    {
        var regex = new Regex(pattern);
        var deadline = Stopwatch.StartNew();
        var limit = timeout ?? TimeSpan.FromSeconds(30);
        lock (_lock)
        {
            while (true)
            {
                for (var i = after; i < _lines.Count; i++)
                    if (regex.Match(_lines[i]) is { Success: true } m) return m;
                var left = limit - deadline.Elapsed;
                if (left <= TimeSpan.Zero || _process.HasExited && deadline.Elapsed > TimeSpan.FromSeconds(1))
                    Assert.Fail($"no line matching /{pattern}/ within {limit.TotalSeconds}s (exited: {_process.HasExited}); output:\n{string.Join("\n", _lines)}");
                Monitor.Wait(_lock, left < TimeSpan.FromMilliseconds(200) ? left : TimeSpan.FromMilliseconds(200));
            }
        }
    }

    public int LineCount
    {
        get { lock (_lock) return _lines.Count; }
    }

    public int WaitForPort() => int.Parse(WaitForLine(@"listening on (?:127\.0\.0\.1|\[::\]|0\.0\.0\.0):(\d+)").Groups[1].Value);

    /// <summary>Pid of generation <paramref name="generation"/> once it has started.</summary>
    public int WaitForGenerationPid(int generation) =>
        int.Parse(WaitForLine($@"generation {generation} \(pid (\d+)\) started").Groups[1].Value);

    public void WaitForReady(int generation) => WaitForLine($@"generation {generation} \(pid \d+\) is ready");

    public void Signal(int signal) => Assert.That(Native.Kill(_process.Id, signal), Is.EqualTo(0), $"kill({signal})");

    public int WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout)) Assert.Fail($"gsupervisor did not exit within {timeout.TotalSeconds}s; output:\n{Output}");
        _process.WaitForExit(); // drain the output readers
        return _process.ExitCode;
    }

    public bool HasExited => _process.HasExited;

    public IReadOnlyCollection<int> ChildPids
    {
        get { lock (_lock) return _childPids.Keys.ToList(); }
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                Native.Kill(_process.Id, 15);
                if (!_process.WaitForExit(TimeSpan.FromSeconds(15))) _process.Kill();
                _process.WaitForExit();
            }
        }
        finally
        {
            // Only children still alive as the same process (same start time): a pid reused since is left alone.
            // Pids logged inside another PID namespace are never recorded.
            List<KeyValuePair<int, ulong>> children;
            lock (_lock) children = _childPids.ToList();
            foreach (var (pid, started) in children)
            {
                if (Native.StartTime(pid) != started) continue;
                Native.Kill(-pid, 9);
                Native.Kill(pid, 9);
            }
            _process.Dispose();
            try { Directory.Delete(_runtimeDirectory, true); }
            catch (IOException) { /* a socket still bound by a dying process; the OS tmp cleaner gets it */ }
        }
    }
}

/// <summary>Runs a short gsupervisor command (a verb) to completion.</summary>
internal static class Verb
{
    /// <param name="asUser">Run as this uid (through setpriv; needs root).</param>
    /// <param name="overridingFileModes">With asUser: keep CAP_DAC_OVERRIDE, so file modes do not stop it and only the daemon's own checks can.</param>
    /// <param name="program">Another gsupervisor binary than the installed one (a copy a test upgrades).</param>
    public static (int Code, string Stdout, string Stderr) Run(IEnumerable<string> arguments, string? asUser = null, bool overridingFileModes = false,
        string? program = null)
    {
        var info = new ProcessStartInfo(asUser is null ? program ?? Paths.Supervisor : "/usr/bin/setpriv")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (asUser is not null)
        {
            string[] caps = overridingFileModes ? ["--inh-caps=+dac_override", "--ambient-caps=+dac_override"] : [];
            string[] prefix = [$"--reuid={asUser}", $"--regid={asUser}", "--clear-groups", .. caps, Paths.Supervisor];
            foreach (var a in prefix) info.ArgumentList.Add(a);
            info.Environment["HOME"] = "/tmp";
        }
        foreach (var a in arguments) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromSeconds(120)))
        {
            process.Kill();
            Assert.Fail($"gsupervisor {string.Join(' ', arguments)} did not finish");
        }
        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}

internal static class Http
{
    /// <summary>One GET on a new connection to a Unix socket; returns the body.</summary>
    public static string Get(string unixPath)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(unixPath));
        using var stream = new NetworkStream(socket);
        stream.Write(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"));
        using var reader = new StreamReader(stream);
        var text = reader.ReadToEnd();
        Assert.That(text, Does.StartWith("HTTP/1.1 200 "));
        return text[(text.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..].Trim();
    }

    /// <summary>
    /// GETs with <paramref name="get"/> until the answer comes from generation <paramref name="generation"/>, and
    /// returns it. Right after a reload the old generation, already waiting in accept() when it got its stop
    /// signal, may still take (and answer) a connection or two before it stops accepting.
    /// </summary>
    public static string UntilGeneration(Func<string> get, int generation)
    {
        var answer = "";
        Poll.Until(() => (answer = get()).EndsWith($"gen={generation}", StringComparison.Ordinal), TimeSpan.FromSeconds(10),
            $"an answer from generation {generation} (last: {answer})");
        return answer;
    }

    /// <summary>One GET on a new connection; returns the body.</summary>
    public static string Get(int port)
    {
        using var client = new TcpClient();
        client.Connect("127.0.0.1", port);
        var stream = client.GetStream();
        stream.Write(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"));
        using var reader = new StreamReader(stream);
        var text = reader.ReadToEnd();
        Assert.That(text, Does.StartWith("HTTP/1.1 200 "));
        return text[(text.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..].Trim();
    }
}
