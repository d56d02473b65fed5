// Overview
// --------
// The handoff socket: a Unix stream socket that children (or their descendants) connect to for the listening
// sockets as SCM_RIGHTS, and to report readiness over a connection that lives as long as the generation.
// The accept thread only accepts and reads SO_PEERCRED; whether a peer belongs to a generation is decided
// on the event loop. Each accepted connection gets a reader thread that turns lines into callbacks;
// lines are bounded, and a peer that exceeds the bound is cut off.

using GSupervisor.Core;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal sealed class HandoffServer
{
    private readonly int _fd;

    public HandoffServer(string path)
    {
        Path = path;
        _fd = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, UnixSocketFlags.SOCK_CLOEXEC, 0);
        if (_fd < 0) throw new StartupException(ExitCodes.OsError, $"cannot create the handoff socket: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        if (Syscall.bind(_fd, new SockaddrUn(path)) != 0 || Syscall.listen(_fd, 64) != 0)
            throw new StartupException(ExitCodes.OsError, $"cannot listen on the handoff socket {path}: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        Syscall.chmod(path, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR);
    }

    public string Path { get; }

    public void Start(Action<HandoffConnection> onConnected, Action<string> onError) =>
        new Thread(() => AcceptLoop(onConnected, onError)) { IsBackground = true, Name = "handoff-accept" }.Start();

    private void AcceptLoop(Action<HandoffConnection> onConnected, Action<string> onError)
    {
        while (true)
        {
            var fd = Syscall.accept4(_fd, new SockaddrUn(), UnixSocketFlags.SOCK_CLOEXEC);
            if (fd < 0)
            {
                var errno = ErrorNumbers.Last;
                if (errno is ErrorNumbers.EINTR or 103 /* ECONNABORTED */) continue;
                onError($"handoff accept failed: {ErrorNumbers.Describe(errno)}");
                Thread.Sleep(TimeSpan.FromSeconds(1)); // EMFILE and the like: back off rather than spin
                continue;
            }
            if (!Libc.TryGetPeerCredentials(fd, out var pid, out var uid, out _))
            {
                onError($"cannot read the credentials of a handoff peer: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
                Syscall.close(fd);
                continue;
            }
            onConnected(new HandoffConnection(fd, pid, uid));
        }
    }
}

/// <summary>One accepted handoff connection. Only its reader thread closes the fd; others shut it down.</summary>
internal sealed class HandoffConnection(int fd, int peerPid, int peerUid)
{
    private readonly Lock _lock = new();
    private bool _closed;

    public int PeerPid { get; } = peerPid;
    public int PeerUid { get; } = peerUid;

    public void Refuse(string reason)
    {
        var bytes = HandoffProtocol.EncodeRefusal(reason);
        Syscall.send(fd, bytes, (ulong)bytes.Length, MessageFlags.MSG_DONTWAIT | MessageFlags.MSG_NOSIGNAL);
        Syscall.close(fd);
    }

    /// <summary>Sends the greeting with the listener fds; returns 0 or errno.</summary>
    public int SendGreeting(int generation, IReadOnlyList<string> names, IReadOnlyList<int> fds) =>
        UnixMessages.SendWithFds(fd, HandoffProtocol.EncodeGreeting(generation, names), fds, dontWait: true);

    /// <summary>Reads lines on a thread of its own until end of file, then closes the fd.</summary>
    public void StartReading(Action<byte[]> onLine, Action<string> onProtocolError, Action onClosed) =>
        new Thread(() => ReadLoop(onLine, onProtocolError, onClosed)) { IsBackground = true, Name = $"handoff-{PeerPid}" }.Start();

    /// <summary>Writes one line without waiting; a peer that does not read loses it (the stop signal follows anyway).</summary>
    public void SendLine(string line)
    {
        var bytes = System.Text.Encoding.ASCII.GetBytes(line + "\n");
        lock (_lock)
            if (!_closed) Syscall.send(fd, bytes, (ulong)bytes.Length, MessageFlags.MSG_DONTWAIT | MessageFlags.MSG_NOSIGNAL);
    }

    /// <summary>Ends the connection; the reader sees end of file and closes it.</summary>
    public void Shutdown()
    {
        lock (_lock)
            if (!_closed) Syscall.shutdown(fd, ShutdownOption.SHUT_RDWR);
    }

    private unsafe void ReadLoop(Action<byte[]> onLine, Action<string> onProtocolError, Action onClosed)
    {
        var buffer = new byte[HandoffProtocol.MaxLineBytes + 1];
        var filled = 0;
        try
        {
            while (true)
            {
                long n;
                fixed (byte* p = buffer)
                    n = Syscall.read(fd, p + filled, (ulong)(buffer.Length - filled));
                if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
                if (n <= 0) return;
                filled += (int)n;
                int newline;
                var start = 0;
                while ((newline = Array.IndexOf(buffer, (byte)'\n', start, filled - start)) >= 0)
                {
                    if (newline > start) onLine(buffer.AsSpan(start, newline - start).ToArray()); // empty lines carry nothing
                    start = newline + 1;
                }
                Buffer.BlockCopy(buffer, start, buffer, 0, filled - start);
                filled -= start;
                if (filled == buffer.Length)
                {
                    onProtocolError($"a line longer than {HandoffProtocol.MaxLineBytes} bytes");
                    return;
                }
            }
        }
        finally
        {
            lock (_lock)
            {
                _closed = true;
                Syscall.close(fd);
            }
            onClosed();
        }
    }
}
