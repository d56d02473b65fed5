// Overview
// --------
// Small network helpers: a free port, one GET / that reads the answering pid, and a poll with a deadline
// until the port answers (from a given pid).

using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

namespace CompareBench;

internal static class Net
{
    /// <summary>A port free now (bound and released at once); the strategies that bind by number need one.</summary>
    public static int FreePort()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    /// <summary>One GET / on a new connection: the pid in the answer, or null if there was no good answer.</summary>
    public static async Task<int?> AskPidAsync(int port, CancellationToken token)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(token);
        timeout.CancelAfter(TimeSpan.FromSeconds(2));
        try
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await socket.ConnectAsync(IPAddress.Loopback, port, timeout.Token);
            await socket.SendAsync("GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"u8.ToArray(), timeout.Token);
            var answer = new StringBuilder();
            var buffer = new byte[1024];
            int n;
            while ((n = await socket.ReceiveAsync(buffer, timeout.Token)) > 0) answer.Append(Encoding.ASCII.GetString(buffer, 0, n));
            var text = answer.ToString();
            return text.StartsWith("HTTP/1.1 200 ", StringComparison.Ordinal) && Regex.Match(text, @"pid=(\d+)") is { Success: true } m
                ? int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)
                : null;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
        {
            if (token.IsCancellationRequested) throw;
            return null;
        }
    }

    /// <summary>
    /// Polls the port every 20 ms until an answer comes from <paramref name="pid"/> (any pid if null); the
    /// time it came. Fails if <paramref name="process"/> exits first, or after <see cref="Strategy.StepTimeout"/>.
    /// </summary>
    public static async Task<long> PollUntilAnswersAsync(int port, int? pid, Child? process, CancellationToken token)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            if (await AskPidAsync(port, token) is { } answered && (pid is null || answered == pid)) return Stopwatch.GetTimestamp();
            if (process is { HasExited: true })
                throw new BenchException($"{process.Name} exited (status {process.ExitCode}) before it answered on port {port}:\n{process.Tail()}");
            if (deadline.Elapsed > Strategy.StepTimeout)
                throw new BenchException($"nothing answered on port {port}{(pid is null ? "" : $" from pid {pid}")} within {Strategy.StepTimeout.TotalSeconds:F0} s");
            await Task.Delay(20, token); // the poll interval
        }
    }
}
