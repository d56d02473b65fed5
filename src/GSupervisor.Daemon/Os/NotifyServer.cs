using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

/// <summary>
/// The NOTIFY_SOCKET children see: a Unix datagram socket with SO_PASSCRED on, so every message arrives with
/// the sender's pid and uid as the kernel vouches for them. A thread blocks in recvmsg and hands each
/// datagram on; parsing and attribution to a generation happen on the event loop.
/// </summary>
internal sealed class NotifyServer
{
    private readonly int _fd;

    /// <summary>Carried across an in-place upgrade: the socket bound by an earlier image, at <paramref name="fd"/>.</summary>
    public NotifyServer(string path, int fd)
    {
        Path = path;
        _fd = fd;
    }

    public NotifyServer(string path)
    {
        Path = path;
        _fd = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_DGRAM, UnixSocketFlags.SOCK_CLOEXEC, 0);
        if (_fd < 0) throw new StartupException(ExitCodes.OsError, $"cannot create the notify socket: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        if (Syscall.bind(_fd, new SockaddrUn(path)) != 0)
            throw new StartupException(ExitCodes.OsError, $"cannot bind the notify socket {path}: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        Syscall.chmod(path, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR);
        if (Syscall.setsockopt(_fd, UnixSocketProtocol.SOL_SOCKET, UnixSocketOptionName.SO_PASSCRED, 1) != 0)
            throw new StartupException(ExitCodes.OsError, $"cannot enable SO_PASSCRED on the notify socket: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
    }

    public string Path { get; }

    public int SocketFd => _fd;

    public void Start(Action<ReceivedDatagram> onDatagram, Action<string> onError, IntakeGate gate) =>
        new Thread(() => Loop(onDatagram, onError, gate)) { IsBackground = true, Name = "notify" }.Start();

    private void Loop(Action<ReceivedDatagram> onDatagram, Action<string> onError, IntakeGate gate)
    {
        // One byte more than the largest accepted message, so an oversized one shows as truncated.
        var buffer = new byte[Core.NotifyMessage.MaxBytes + 1];
        while (true)
        {
            Fd.WaitReadable(_fd);
            int errno;
            using (gate.Enter())
            {
                var datagram = UnixMessages.ReceiveWithCredentials(_fd, buffer, out errno);
                if (datagram is not null) onDatagram(datagram);
                if (datagram is not null || errno == ErrorNumbers.EAGAIN) continue;
            }
            onError($"notify socket receive failed: {ErrorNumbers.Describe(errno)}");
            Thread.Sleep(TimeSpan.FromSeconds(1)); // a persistent error must not spin; recvmsg on a bound socket does not fail in practice
        }
    }
}
