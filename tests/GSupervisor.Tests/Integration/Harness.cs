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
    public static string Supervisor => Path.Combine(Root, "src/GSupervisor.Daemon/bin", Configuration, "net10.0/gsupervisor");
    public static string TestChild => Path.Combine(Root, "tests/TestChild/bin", Configuration, "net10.0/TestChild");
    public static string EchoServer => Path.Combine(Root, "examples/EchoServer/bin", Configuration, "net10.0/EchoServer");
    public static string HelloKestrel => Path.Combine(Root, "examples/HelloKestrel/bin", Configuration, "net10.0/HelloKestrel");
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
    private readonly HashSet<int> _childPids = [];

    private SupervisorProcess(Process process) => _process = process;

    public int Pid => _process.Id;

    public static SupervisorProcess Start(IEnumerable<string> arguments, string? workingDirectory = null,
        IDictionary<string, string>? environment = null, string? program = null, IEnumerable<string>? prefix = null)
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
        if (program is not null && prefix is not null) info.ArgumentList.Add(Paths.Supervisor);
        foreach (var a in arguments) info.ArgumentList.Add(a);
        if (environment is not null) foreach (var (k, v) in environment) info.Environment[k] = v;
        var process = Process.Start(info)!;
        var supervisor = new SupervisorProcess(process);
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
            if (StartedLine().Match(line) is { Success: true } m) _childPids.Add(int.Parse(m.Groups[2].Value));
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
        get { lock (_lock) return _childPids.ToList(); }
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
            foreach (var pid in ChildPids)
            {
                Native.Kill(-pid, 9);
                Native.Kill(pid, 9);
            }
            _process.Dispose();
        }
    }
}

/// <summary>
/// HTTP load with a new connection per request, from several workers. It never retries: every refused or
/// reset connection, early end of file or non-200 answer is counted as a failure with its reason.
/// </summary>
internal sealed class NewConnectionLoad : IDisposable
{
    private readonly int _port;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _workers = [];
    private readonly List<string> _failures = [];
    private readonly HashSet<string> _generations = [];
    private long _successes;

    public NewConnectionLoad(int port, int workers)
    {
        _port = port;
        for (var i = 0; i < workers; i++) _workers.Add(Task.Run(Work));
    }

    public long Successes => Interlocked.Read(ref _successes);

    public IReadOnlyList<string> Failures
    {
        get { lock (_failures) return _failures.ToList(); }
    }

    public IReadOnlySet<string> GenerationsSeen
    {
        get { lock (_generations) return _generations.ToHashSet(); }
    }

    private async Task Work()
    {
        var buffer = new byte[1024];
        var request = Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await socket.ConnectAsync("127.0.0.1", _port, timeout.Token);
                await socket.SendAsync(request, timeout.Token);
                var response = new StringBuilder();
                int n;
                while ((n = await socket.ReceiveAsync(buffer, timeout.Token)) > 0)
                    response.Append(Encoding.ASCII.GetString(buffer, 0, n));
                var text = response.ToString();
                if (!text.StartsWith("HTTP/1.1 200 ", StringComparison.Ordinal))
                {
                    Fail(text.Length == 0 ? "empty response (connection closed unanswered)" : "unexpected response: " + text.Split('\n')[0]);
                    continue;
                }
                var generation = Regex.Match(text, @"gen=(\d+)").Groups[1].Value;
                lock (_generations) _generations.Add(generation);
                Interlocked.Increment(ref _successes);
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
            {
                Fail(e.GetType().Name + ": " + e.Message);
            }
        }
    }

    private void Fail(string reason)
    {
        lock (_failures) _failures.Add(reason);
    }

    public void Stop()
    {
        _stop.Cancel();
        Task.WaitAll(_workers.ToArray(), TimeSpan.FromSeconds(30));
    }

    public void Dispose()
    {
        if (!_stop.IsCancellationRequested) Stop();
    }
}

internal static class Http
{
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

/// <summary>
/// HTTP/1.1 keep-alive load: each worker holds one connection and sends requests on it back to back. A
/// response with "Connection: close" ends the connection cleanly and the worker opens a new one; anything
/// else that ends a connection (reset, end of file before or inside a response, non-200) is a failure.
/// Nothing is retried.
/// </summary>
internal sealed class KeepAliveLoad : IDisposable
{
    private readonly int _port;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _workers = [];
    private readonly List<string> _failures = [];
    private long _successes;
    private long _connections;

    public KeepAliveLoad(int port, int connections)
    {
        _port = port;
        for (var i = 0; i < connections; i++) _workers.Add(Task.Run(Work));
    }

    public long Successes => Interlocked.Read(ref _successes);
    public long ConnectionsOpened => Interlocked.Read(ref _connections);

    public IReadOnlyList<string> Failures
    {
        get { lock (_failures) return _failures.ToList(); }
    }

    private async Task Work()
    {
        var request = Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: test\r\n\r\n");
        while (!_stop.IsCancellationRequested)
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await socket.ConnectAsync("127.0.0.1", _port);
                Interlocked.Increment(ref _connections);
                var reader = new ResponseReader(socket);
                while (!_stop.IsCancellationRequested)
                {
                    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                    await socket.SendAsync(request, timeout.Token);
                    var (status, close) = await reader.ReadResponseAsync(timeout.Token);
                    if (status != 200)
                    {
                        Fail($"status {status}");
                        break;
                    }
                    Interlocked.Increment(ref _successes);
                    if (close) break;
                }
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
            {
                if (!_stop.IsCancellationRequested) Fail(e.GetType().Name + ": " + e.Message);
            }
        }
    }

    private void Fail(string reason)
    {
        lock (_failures) _failures.Add(reason);
    }

    public void Stop()
    {
        _stop.Cancel();
        Task.WaitAll(_workers.ToArray(), TimeSpan.FromSeconds(30));
    }

    public void Dispose()
    {
        if (!_stop.IsCancellationRequested) Stop();
    }

    /// <summary>Reads HTTP/1.1 responses with Content-Length bodies off a connection.</summary>
    private sealed class ResponseReader(Socket socket)
    {
        private readonly byte[] _buffer = new byte[8192];
        private int _start;
        private int _end;

        public async Task<(int Status, bool Close)> ReadResponseAsync(CancellationToken token)
        {
            int headerEnd;
            while ((headerEnd = IndexOfHeaderEnd()) < 0)
                await FillAsync(token, "before the response headers");
            var head = Encoding.ASCII.GetString(_buffer, _start, headerEnd - _start);
            _start = headerEnd + 4;
            var lines = head.Split("\r\n");
            var status = int.Parse(lines[0].Split(' ')[1]);
            var length = 0;
            var close = false;
            foreach (var line in lines.Skip(1))
            {
                var colon = line.IndexOf(':');
                var name = line[..colon].Trim();
                var value = line[(colon + 1)..].Trim();
                if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase)) length = int.Parse(value);
                if (name.Equals("Connection", StringComparison.OrdinalIgnoreCase) && value.Contains("close", StringComparison.OrdinalIgnoreCase)) close = true;
            }
            while (_end - _start < length) await FillAsync(token, "inside the response body");
            _start += length;
            return (status, close);
        }

        private int IndexOfHeaderEnd() => _buffer.AsSpan(_start, _end - _start).IndexOf("\r\n\r\n"u8) is var i and >= 0 ? _start + i : -1;

        private async Task FillAsync(CancellationToken token, string where)
        {
            if (_start > 0)
            {
                Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
                _end -= _start;
                _start = 0;
            }
            var n = await socket.ReceiveAsync(_buffer.AsMemory(_end), token);
            if (n == 0) throw new IOException($"connection closed {where}");
            _end += n;
        }
    }
}
