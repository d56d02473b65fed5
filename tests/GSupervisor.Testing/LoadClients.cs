// Overview
// --------
// Load clients for reload tests and benchmarks. Neither ever retries: every refused or reset connection,
// early end of file or non-200 answer is counted as a failure with its reason. Each request's latency is
// kept, so a benchmark can report percentiles.

using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

namespace GSupervisor.Testing;

/// <summary>Request counts, failures and latencies gathered by a load client.</summary>
public abstract class LoadBase : IDisposable
{
    private readonly List<string> _failures = [];
    private readonly List<(double At, double Milliseconds)> _latencies = [];
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private long _successes;

    protected CancellationTokenSource Stopping { get; } = new();
    protected List<Task> Workers { get; } = [];

    public long Successes => Interlocked.Read(ref _successes);

    public IReadOnlyList<string> Failures
    {
        get { lock (_failures) return _failures.ToList(); }
    }

    /// <summary>Seconds since the load started, on the clock latencies are stamped with.</summary>
    public double Elapsed => _clock.Elapsed.TotalSeconds;

    /// <summary>(seconds since start, latency in ms) of every successful request.</summary>
    public IReadOnlyList<(double At, double Milliseconds)> Latencies
    {
        get { lock (_latencies) return _latencies.ToList(); }
    }

    protected long Start() => Stopwatch.GetTimestamp();

    protected void Succeeded(long started)
    {
        var ms = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
        lock (_latencies) _latencies.Add((Elapsed, ms));
        Interlocked.Increment(ref _successes);
    }

    protected void Fail(string reason)
    {
        lock (_failures) _failures.Add(reason);
    }

    public void Stop()
    {
        Stopping.Cancel();
        Task.WaitAll(Workers.ToArray(), TimeSpan.FromSeconds(30));
    }

    public void Dispose()
    {
        if (!Stopping.IsCancellationRequested) Stop();
        GC.SuppressFinalize(this);
    }
}

/// <summary>HTTP load with a new connection per request, from several workers.</summary>
public sealed class NewConnectionLoad : LoadBase
{
    private readonly int _port;
    private readonly Dictionary<string, long> _generations = [];

    public NewConnectionLoad(int port, int workers)
    {
        _port = port;
        for (var i = 0; i < workers; i++) Workers.Add(Task.Run(Work));
    }

    /// <summary>The gen=N values seen in response bodies.</summary>
    public IReadOnlySet<string> GenerationsSeen
    {
        get { lock (_generations) return _generations.Keys.ToHashSet(); }
    }

    /// <summary>How many answers came from each generation (gen=N in the body) so far.</summary>
    public IReadOnlyDictionary<string, long> AnswersByGeneration
    {
        get { lock (_generations) return new Dictionary<string, long>(_generations); }
    }

    private async Task Work()
    {
        var buffer = new byte[1024];
        var request = Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        while (!Stopping.IsCancellationRequested)
        {
            var started = Start();
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
                lock (_generations) _generations[generation] = _generations.GetValueOrDefault(generation) + 1;
                Succeeded(started);
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
            {
                Fail(e.GetType().Name + ": " + e.Message);
            }
        }
    }
}

/// <summary>
/// HTTP/1.1 keep-alive load: each worker holds one connection and sends requests on it back to back. A
/// response with "Connection: close" ends the connection cleanly and the worker opens a new one; anything
/// else that ends a connection (reset, end of file before or inside a response, non-200) is a failure.
/// </summary>
public sealed class KeepAliveLoad : LoadBase
{
    private readonly int _port;
    private long _connections;

    public KeepAliveLoad(int port, int connections)
    {
        _port = port;
        for (var i = 0; i < connections; i++) Workers.Add(Task.Run(Work));
    }

    public long ConnectionsOpened => Interlocked.Read(ref _connections);

    private async Task Work()
    {
        var request = Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: test\r\n\r\n");
        while (!Stopping.IsCancellationRequested)
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await socket.ConnectAsync("127.0.0.1", _port);
                Interlocked.Increment(ref _connections);
                var reader = new ResponseReader(socket);
                while (!Stopping.IsCancellationRequested)
                {
                    var started = Start();
                    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                    await socket.SendAsync(request, timeout.Token);
                    var (status, close) = await reader.ReadResponseAsync(timeout.Token);
                    if (status != 200)
                    {
                        Fail($"status {status}");
                        break;
                    }
                    Succeeded(started);
                    if (close) break;
                }
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
            {
                if (!Stopping.IsCancellationRequested) Fail(e.GetType().Name + ": " + e.Message);
            }
        }
    }

    /// <summary>Reads HTTP/1.1 responses (Content-Length or chunked bodies) off a connection.</summary>
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
            var chunked = false;
            foreach (var line in lines.Skip(1))
            {
                var colon = line.IndexOf(':');
                var name = line[..colon].Trim();
                var value = line[(colon + 1)..].Trim();
                if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase)) length = int.Parse(value);
                if (name.Equals("Transfer-Encoding", StringComparison.OrdinalIgnoreCase) && value.Contains("chunked", StringComparison.OrdinalIgnoreCase)) chunked = true;
                if (name.Equals("Connection", StringComparison.OrdinalIgnoreCase) && value.Contains("close", StringComparison.OrdinalIgnoreCase)) close = true;
            }
            if (chunked)
            {
                // chunk-size line, data, CRLF; a zero size ends the body, then trailer lines up to an empty one.
                int size;
                while ((size = Convert.ToInt32((await ReadLineAsync(token)).Split(';')[0], 16)) > 0)
                    await SkipAsync(size + 2, token);
                while ((await ReadLineAsync(token)).Length > 0) { }
                return (status, close);
            }
            await SkipAsync(length, token);
            return (status, close);
        }

        private async Task SkipAsync(int count, CancellationToken token)
        {
            while (_end - _start < count) await FillAsync(token, "inside the response body");
            _start += count;
        }

        private async Task<string> ReadLineAsync(CancellationToken token)
        {
            int lineEnd;
            while ((lineEnd = _buffer.AsSpan(_start, _end - _start).IndexOf("\r\n"u8)) < 0)
                await FillAsync(token, "inside a chunked body");
            var line = Encoding.ASCII.GetString(_buffer, _start, lineEnd);
            _start += lineEnd + 2;
            return line;
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
