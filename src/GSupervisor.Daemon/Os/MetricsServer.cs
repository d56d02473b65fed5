// Overview
// --------
// The Prometheus endpoint (--metrics [HOST]:PORT or unix:PATH): the supervisor's own listening socket, never
// handed to a child (it is close-on-exec, outside the fds a child gets) and kept across an in-place upgrade. One
// thread accepts a connection and reads the request head (a second at most), through the intake gate, and posts it
// to the event loop, which renders the metrics (MetricsText.cs) and writes the answer: the numbers live there.
// HTTP/1.1, one request per connection (Connection: close): GET or HEAD of /metrics; anything else is a 404 or
// 405. An idle supervisor waits in poll(); nothing runs between scrapes.

using System.Text;
using GSupervisor.Core;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal sealed class MetricsServer
{
    private const int MaxRequestBytes = 8192;

    private MetricsServer(BoundListener listener) => Listener = listener;

    public BoundListener Listener { get; }

    /// <summary>Binds the endpoint as --listen binds (an address in use is one line and exit 69).</summary>
    public static MetricsServer Bind(ListenSpec spec)
    {
        var listener = Listeners.BindAll([spec], backlog: 64)[0];
        Libc.SetNonBlocking(listener.Fd); // accept only after poll, through the intake gate; the socket is ours alone
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
            int errno;
            using (gate.Enter())
            {
                var fd = Syscall.accept4(Listener.Fd, new SockaddrStorage(), UnixSocketFlags.SOCK_CLOEXEC);
                errno = fd < 0 ? ErrorNumbers.Last : 0;
                if (fd >= 0 && Read(fd) is { } request) onRequest(request);
            }
            if (errno is not (0 or ErrorNumbers.EINTR or ErrorNumbers.EAGAIN or 103)) Thread.Sleep(TimeSpan.FromSeconds(1)); // EMFILE: back off, never spin
        }
    }

    /// <summary>The request line of a connection, read within a second; null (and the connection closed) when none came.</summary>
    private static unsafe MetricsRequest? Read(int fd)
    {
        var timeout = new Timeval { tv_sec = 1 };
        Syscall.setsockopt(fd, UnixSocketProtocol.SOL_SOCKET, UnixSocketOptionName.SO_RCVTIMEO, timeout);
        Syscall.setsockopt(fd, UnixSocketProtocol.SOL_SOCKET, UnixSocketOptionName.SO_SNDTIMEO, timeout);
        var buffer = new byte[MaxRequestBytes];
        var filled = 0;
        while (filled < buffer.Length && buffer.AsSpan(0, filled).IndexOf("\r\n\r\n"u8) < 0)
        {
            long n;
            fixed (byte* p = buffer) n = Syscall.read(fd, p + filled, (ulong)(buffer.Length - filled));
            if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
            if (n <= 0) break;
            filled += (int)n;
        }
        var head = Encoding.ASCII.GetString(buffer, 0, filled);
        var firstLine = head.Split("\r\n")[0].Split(' ');
        if (firstLine.Length < 3 || !firstLine[2].StartsWith("HTTP/", StringComparison.Ordinal))
        {
            Syscall.close(fd);
            return null;
        }
        return new MetricsRequest(fd, firstLine[0], firstLine[1]);
    }
}

/// <summary>One scrape: the loop answers it with <see cref="Answer"/>, which closes the connection.</summary>
internal sealed class MetricsRequest(int fd, string method, string target)
{
    public string Method => method;
    /// <summary>The path, without a query string.</summary>
    public string Path => target.Split('?')[0];

    public void Answer(int status, string reason, string contentType, string body, bool withBody)
    {
        var bytes = Encoding.UTF8.GetBytes(body);
        var head = Encoding.ASCII.GetBytes(
            $"HTTP/1.1 {status} {reason}\r\nContent-Type: {contentType}\r\nContent-Length: {bytes.Length}\r\nConnection: close\r\n\r\n");
        Send(withBody ? [.. head, .. bytes] : head);
        Syscall.shutdown(fd, ShutdownOption.SHUT_WR);
        Syscall.close(fd);
    }

    private void Send(byte[] bytes)
    {
        var sent = 0;
        while (sent < bytes.Length)
        {
            var n = Syscall.send(fd, bytes[sent..], (ulong)(bytes.Length - sent), MessageFlags.MSG_NOSIGNAL);
            if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
            if (n <= 0) break; // the peer is gone, or did not read for a second (SO_SNDTIMEO)
            sent += (int)n;
        }
    }
}
