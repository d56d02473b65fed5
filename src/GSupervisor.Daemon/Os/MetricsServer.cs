// Overview
// --------
// The Prometheus endpoint (--metrics [HOST]:PORT or unix:PATH): the supervisor's own listening socket, never
// handed to a child (it is close-on-exec, outside the fds a child gets) and kept across an in-place upgrade. One
// thread accepts a connection and reads the request head (one second in all, 2 KiB at most), then posts it
// through the intake gate to the event loop, which renders the metrics (MetricsText.cs) and writes the answer:
// the numbers live there. At most 4 scrapes wait for the loop at once; more get a 503 from this thread, so a flood
// of scrapes neither grows the loop's queue nor takes the places of the children's messages. A connection not yet
// posted when an upgrade execs is closed (close-on-exec): that scrape fails, the next one is served by the new
// image. HTTP/1.1, one request per connection (Connection: close): GET or HEAD of /metrics; anything else is a
// 404 or 405. An idle supervisor waits in poll(); nothing runs between scrapes.

using System.Text;
using GSupervisor.Core;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal sealed class MetricsServer
{
    private const int MaxRequestBytes = 2048;
    private static readonly TimeSpan ReadTimeout = TimeSpan.FromSeconds(1);
    private const int MaxWaiting = 4;
    private readonly SemaphoreSlim _waiting = new(MaxWaiting, MaxWaiting);

    private MetricsServer(BoundListener listener) => Listener = listener;

    public BoundListener Listener { get; }

    /// <summary>Binds the endpoint as --listen binds (an address in use is one line and exit 69).</summary>
    public static MetricsServer Bind(ListenSpec spec)
    {
        var listener = Listeners.BindOwn(spec, backlog: 64);
        Libc.SetNonBlocking(listener.Fd); // accept only after poll, and never wait in it; the socket is ours alone
        return new MetricsServer(listener);
    }

    /// <summary>Carried across an in-place upgrade: the socket an earlier image listens on.</summary>
    public static MetricsServer Adopt(BoundListener listener) => new(listener);

    public void Start(Action<MetricsRequest> onRequest, IntakeGate gate) =>
        new Thread(() => AcceptLoop(onRequest, gate)) { IsBackground = true, Name = "metrics" }.Start();

    public void Close() => Listeners.CloseAll([Listener]);

    private void AcceptLoop(Action<MetricsRequest> onRequest, IntakeGate gate)
    {
        while (true)
        {
            Fd.WaitReadable(Listener.Fd);
            var fd = Syscall.accept4(Listener.Fd, new SockaddrStorage(), UnixSocketFlags.SOCK_CLOEXEC);
            if (fd < 0)
            {
                if (ErrorNumbers.Last is not (ErrorNumbers.EINTR or ErrorNumbers.EAGAIN or 103)) Thread.Sleep(TimeSpan.FromSeconds(1)); // EMFILE: back off, never spin
                continue;
            }
            if (Read(fd, () => _waiting.Release()) is not { } request) continue;
            if (!_waiting.Wait(0))
            {
                request.Answer(503, "Service Unavailable", "text/plain", "too many scrapes at once; try again\n", withBody: true, release: false);
                continue;
            }
            using (gate.Enter()) onRequest(request);
        }
    }

    /// <summary>
    /// The request line of a connection, read within one second in all (a client that trickles bytes gets no
    /// more); null, and the connection closed, when no request came.
    /// </summary>
    private static unsafe MetricsRequest? Read(int fd, Action onAnswered)
    {
        Libc.SetNonBlocking(fd); // reads wait in poll with what is left of the second; the answer's writes too
        var deadline = Environment.TickCount64 + (long)ReadTimeout.TotalMilliseconds;
        var buffer = new byte[MaxRequestBytes];
        var filled = 0;
        while (filled < buffer.Length && buffer.AsSpan(0, filled).IndexOf("\r\n\r\n"u8) < 0 && buffer.AsSpan(0, filled).IndexOf("\n\n"u8) < 0)
        {
            var left = deadline - Environment.TickCount64;
            if (left <= 0 || !Fd.WaitReadable(fd, TimeSpan.FromMilliseconds(left))) break;
            long n;
            fixed (byte* p = buffer) n = Syscall.read(fd, p + filled, (ulong)(buffer.Length - filled));
            if (n < 0 && ErrorNumbers.Last is ErrorNumbers.EINTR or ErrorNumbers.EAGAIN) continue;
            if (n <= 0) break;
            filled += (int)n;
        }
        var head = Encoding.ASCII.GetString(buffer, 0, filled);
        var firstLine = head.Split('\n')[0].TrimEnd('\r').Split(' ');
        if (firstLine.Length < 3 || !firstLine[2].StartsWith("HTTP/", StringComparison.Ordinal))
        {
            Syscall.close(fd);
            return null;
        }
        return new MetricsRequest(fd, firstLine[0], firstLine[1], onAnswered);
    }
}

/// <summary>One scrape: the loop answers it with <see cref="Answer"/>, which closes the connection.</summary>
internal sealed class MetricsRequest(int fd, string method, string target, Action onAnswered)
{
    public string Method => method;
    /// <summary>The path, without a query string.</summary>
    public string Path => target.Split('?')[0];

    public bool Answered { get; private set; }

    /// <param name="release">False for an answer that never took one of the places of the scrapes waiting for the loop.</param>
    public void Answer(int status, string reason, string contentType, string body, bool withBody, bool release = true, string? extraHeader = null)
    {
        if (Answered) return;
        Answered = true;
        try
        {
            var bytes = Encoding.UTF8.GetBytes(body);
            var head = Encoding.ASCII.GetBytes(
                $"HTTP/1.1 {status} {reason}\r\nContent-Type: {contentType}\r\nContent-Length: {bytes.Length}\r\n{extraHeader}Connection: close\r\n\r\n");
            Send(withBody ? [.. head, .. bytes] : head);
            Syscall.shutdown(fd, ShutdownOption.SHUT_WR);
        }
        finally
        {
            Syscall.close(fd);
            if (release) onAnswered();
        }
    }

    private void Send(byte[] bytes)
    {
        var sent = 0;
        while (sent < bytes.Length)
        {
            var n = Syscall.send(fd, bytes[sent..], (ulong)(bytes.Length - sent), MessageFlags.MSG_NOSIGNAL);
            if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
            if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EAGAIN && Fd.WaitWritable(fd, TimeSpan.FromSeconds(1))) continue;
            if (n <= 0) break; // the peer is gone, or did not read for a second
            sent += (int)n;
        }
    }
}
