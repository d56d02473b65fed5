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

    /// <summary>Carried across an in-place upgrade: the socket an earlier image listens on, at <paramref name="fd"/>.</summary>
    public HandoffServer(string path, int fd)
    {
        Path = path;
        _fd = fd;
    }

    public HandoffServer(string path)
    {
        Path = path;
        _fd = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, UnixSocketFlags.SOCK_CLOEXEC, 0);
        if (_fd < 0) throw new StartupException(ExitCodes.OsError, $"cannot create the handoff socket: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        if (Syscall.bind(_fd, new SockaddrUn(path)) != 0 || Syscall.listen(_fd, 64) != 0)
            throw new StartupException(ExitCodes.OsError, $"cannot listen on the handoff socket {path}: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        Syscall.chmod(path, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR);
        Libc.SetNonBlocking(_fd); // accept only after poll, through the intake gate, and never wait in it
    }

    public string Path { get; }

    public int SocketFd => _fd;

    public void Start(Action<HandoffConnection> onConnected, Action<string> onError, IntakeGate gate) =>
        new Thread(() => AcceptLoop(onConnected, onError, gate)) { IsBackground = true, Name = "handoff-accept" }.Start();

    private void AcceptLoop(Action<HandoffConnection> onConnected, Action<string> onError, IntakeGate gate)
    {
        while (true)
        {
            Fd.WaitReadable(_fd);
            int errno;
            using (gate.Enter())
            {
                var fd = Syscall.accept4(_fd, new SockaddrUn(), UnixSocketFlags.SOCK_CLOEXEC);
                errno = fd < 0 ? ErrorNumbers.Last : 0;
                if (fd >= 0)
                {
                    if (Libc.TryGetPeerCredentials(fd, out var pid, out var uid, out _))
                    {
                        onConnected(new HandoffConnection(fd, pid, uid, gate));
                        continue;
                    }
                    errno = ErrorNumbers.Last;
                    Syscall.close(fd);
                    onError($"cannot read the credentials of a handoff peer: {ErrorNumbers.Describe(errno)}");
                    continue;
                }
                if (errno is ErrorNumbers.EINTR or ErrorNumbers.EAGAIN or 103 /* ECONNABORTED */) continue;
                onError($"handoff accept failed: {ErrorNumbers.Describe(errno)}");
            }
            Thread.Sleep(TimeSpan.FromSeconds(1)); // EMFILE and the like: back off rather than spin
        }
    }
}

/// <summary>
/// One accepted handoff connection. Only its reader thread closes the fd; others shut it down. Its reader takes
/// bytes through the intake gate and keeps an unfinished line in <see cref="Pending"/>, which an in-place upgrade
/// carries to the new image with the fd.
/// </summary>
internal sealed class HandoffConnection(int fd, int peerPid, int peerUid, IntakeGate gate, byte[]? pending = null)
{
    private readonly Lock _lock = new();
    private bool _closed;
    private readonly byte[] _buffer = NewBuffer(pending);
    private int _filled = pending?.Length ?? 0;

    public int PeerPid { get; } = peerPid;
    public int PeerUid { get; } = peerUid;
    public int SocketFd => fd;

    /// <summary>The bytes of a line not finished yet (read with the gate closed).</summary>
    public byte[] Pending => _buffer.AsSpan(0, _filled).ToArray();

    private static byte[] NewBuffer(byte[]? pending)
    {
        var buffer = new byte[HandoffProtocol.MaxLineBytes + 1];
        pending?.AsSpan(0, Math.Min(pending.Length, HandoffProtocol.MaxLineBytes)).CopyTo(buffer);
        return buffer;
    }

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

    private void ReadLoop(Action<byte[]> onLine, Action<string> onProtocolError, Action onClosed)
    {
        while (true)
        {
            Fd.WaitReadable(fd);
            using (gate.Enter())
            {
                if (ReadSome(onLine, onProtocolError)) continue;
                // End of file, an error, or a line too long: closed, and the loop told, before the gate opens.
                lock (_lock)
                {
                    _closed = true;
                    Syscall.close(fd);
                }
                onClosed();
                return;
            }
        }
    }

    /// <summary>One read, and the lines it completed passed on; false when the connection is over.</summary>
    private unsafe bool ReadSome(Action<byte[]> onLine, Action<string> onProtocolError)
    {
        long n;
        fixed (byte* p = _buffer)
            while ((n = Syscall.recv(fd, p + _filled, (ulong)(_buffer.Length - _filled), MessageFlags.MSG_DONTWAIT)) < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR)
            {
            }
        if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EAGAIN) return true;
        if (n <= 0) return false;
        _filled += (int)n;
        int newline;
        var start = 0;
        while ((newline = Array.IndexOf(_buffer, (byte)'\n', start, _filled - start)) >= 0)
        {
            if (newline > start) onLine(_buffer.AsSpan(start, newline - start).ToArray()); // empty lines carry nothing
            start = newline + 1;
        }
        Buffer.BlockCopy(_buffer, start, _buffer, 0, _filled - start);
        _filled -= start;
        if (_filled < _buffer.Length) return true;
        onProtocolError($"a line longer than {HandoffProtocol.MaxLineBytes} bytes");
        return false;
    }
}
