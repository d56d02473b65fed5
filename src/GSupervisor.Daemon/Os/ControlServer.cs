// Overview
// --------
// The control socket: `gsupervisor status | reload | upgrade | stop` talk to the running daemon over it. A Unix
// stream socket, mode 0600, and every peer's uid is checked (SO_PEERCRED): only the daemon's own uid or root is
// served. A request is one line (the requests: SupervisorHost.Control.cs); the reply is one or more lines, then
// the daemon closes the connection. The accept thread reads the request line (with a timeout, so a silent peer
// cannot hold it) and hands it to the event loop, which answers. The listening socket and connections waiting
// for their answer cross an in-place upgrade.

using System.Text;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal sealed class ControlServer
{
    /// <summary>A request line's limit: room for `reload -- COMMAND` with a long command line.</summary>
    private const int MaxRequestBytes = 64 * 1024;
    private readonly int _fd;

    private ControlServer(string path, int fd)
    {
        Path = path;
        _fd = fd;
    }

    public string Path { get; }

    public int SocketFd => _fd;

    /// <summary>Carried across an in-place upgrade: the socket an earlier image listens on, at <paramref name="fd"/>.</summary>
    public static ControlServer Adopt(string path, int fd) => new(path, fd);

    /// <summary>The default path: $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), else $XDG_RUNTIME_DIR/gsupervisor, else /run/gsupervisor.</summary>
    public static string DefaultPath() => DefaultPath(Environment.GetEnvironmentVariable);

    /// <summary>The default path for a process with the environment <paramref name="variable"/> reads.</summary>
    public static string DefaultPath(Func<string, string?> variable)
    {
        if (variable("RUNTIME_DIRECTORY") is { Length: > 0 } runtime)
            return System.IO.Path.Combine(runtime.Split(':')[0], "control.sock");
        if (variable("XDG_RUNTIME_DIR") is { Length: > 0 } xdg)
            return System.IO.Path.Combine(xdg, "gsupervisor", "control.sock");
        return "/run/gsupervisor/control.sock";
    }

    /// <summary>Binds the control socket; a live one of another daemon is not taken over, a stale one is replaced.</summary>
    public static ControlServer Bind(string path)
    {
        var directory = System.IO.Path.GetDirectoryName(path)!;
        try
        {
            // Only the last directory is made (the default paths' gsupervisor/): a --control PATH in a tree that
            // does not exist is a typo more often than not, and nothing is created all over the file system.
            if (!Directory.Exists(directory))
            {
                var parent = System.IO.Path.GetDirectoryName(directory);
                if (parent is null || !Directory.Exists(parent))
                    throw new StartupException(ExitCodes.CannotCreate,
                        $"cannot create the control socket {path}: directory {parent} does not exist; create it or give another --control PATH");
                Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new StartupException(e is UnauthorizedAccessException ? ExitCodes.NoPermission : ExitCodes.CannotCreate,
                $"cannot create the control socket's directory {directory}: {e.Message}; give --control PATH");
        }
        // Whoever may write to the directory could replace the socket with one of their own.
        if (Syscall.stat(directory, out var folder) == 0)
        {
            var ourUid = Syscall.geteuid();
            if (!PeerRule.Trusted(folder.st_uid, ourUid))
                throw new StartupException(ExitCodes.NoPermission,
                    $"the control socket's directory {directory} belongs to uid {folder.st_uid}, not to this user (uid {ourUid}) or root, so its owner could replace the socket; give --control PATH in a directory of your own");
            if ((folder.st_mode & (FilePermissions.S_IWGRP | FilePermissions.S_IWOTH)) != 0 && (folder.st_mode & FilePermissions.S_ISVTX) == 0)
                throw new StartupException(ExitCodes.NoPermission,
                    $"the control socket's directory {directory} is writable by others (mode {Convert.ToString((int)folder.st_mode & 0xFFF, 8)}) without the sticky bit, so anyone could replace the socket; give --control PATH in a directory of your own");
        }
        switch (UnixSocketFiles.FreeUnlessLive(path))
        {
            case (UnixSocketFiles.Existing.NotASocket, _):
                throw new StartupException(ExitCodes.CannotCreate, $"--control {path} exists and is not a socket; remove it or give another path");
            case (UnixSocketFiles.Existing.Live, _):
                throw new StartupException(ExitCodes.Unavailable,
                    $"another gsupervisor is running with control socket {path}; give this one its own with --control PATH");
            case (UnixSocketFiles.Existing.Unknown, var errno):
                throw new StartupException(ExitCodes.Unavailable,
                    $"cannot tell whether control socket {path} is in use, or cannot replace it ({ErrorNumbers.Describe(errno)}); give --control PATH");
        }
        var fd = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, UnixSocketFlags.SOCK_CLOEXEC, 0);
        if (UnixSocketFiles.Bind(fd, new SockaddrUn(path), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR) != 0 || Syscall.listen(fd, 16) != 0)
        {
            var errno = ErrorNumbers.Last;
            Syscall.close(fd);
            throw new StartupException(errno == ErrorNumbers.EACCES ? ExitCodes.NoPermission : ExitCodes.CannotCreate,
                $"cannot listen on control socket {path}: {ErrorNumbers.Describe(errno)}; give --control PATH");
        }
        Libc.SetNonBlocking(fd); // accept only after poll, through the intake gate, and never wait in it
        return new ControlServer(path, fd);
    }

    public void Start(Action<ControlRequest> onRequest, Action<string> onRefused, IntakeGate gate) =>
        new Thread(() => AcceptLoop(onRequest, onRefused, gate)) { IsBackground = true, Name = "control" }.Start();

    public void Remove() => Syscall.unlink(Path);

    private void AcceptLoop(Action<ControlRequest> onRequest, Action<string> onRefused, IntakeGate gate)
    {
        var ourUid = Syscall.geteuid();
        while (true)
        {
            Fd.WaitReadable(_fd);
            int errno;
            // Accepting, reading the request (a second at most) and posting it is one pass through the gate.
            using (gate.Enter())
            {
                var fd = Syscall.accept4(_fd, new SockaddrUn(), UnixSocketFlags.SOCK_CLOEXEC);
                errno = fd < 0 ? ErrorNumbers.Last : 0;
                if (fd >= 0) Serve(fd, ourUid, onRequest, onRefused);
            }
            if (errno is not (0 or ErrorNumbers.EINTR or ErrorNumbers.EAGAIN or 103)) Thread.Sleep(TimeSpan.FromSeconds(1)); // EMFILE: back off, never spin
        }
    }

    private static unsafe void Serve(int fd, uint ourUid, Action<ControlRequest> onRequest, Action<string> onRefused)
    {
        var request = new ControlRequest(fd);
        var trusted = Libc.TryGetPeerCredentials(fd, out var pid, out var uid, out _) && PeerRule.Trusted(uid, ourUid);
        // One thread reads every request: a peer that sends nothing holds it for one second at most; and the
        // loop's reply waits at most one second for a peer that does not read it.
        var timeout = new Timeval { tv_sec = 1 };
        Syscall.setsockopt(fd, UnixSocketProtocol.SOL_SOCKET, UnixSocketOptionName.SO_RCVTIMEO, timeout);
        Syscall.setsockopt(fd, UnixSocketProtocol.SOL_SOCKET, UnixSocketOptionName.SO_SNDTIMEO, timeout);
        var buffer = new byte[MaxRequestBytes];
        var filled = 0;
        while (filled < buffer.Length && Array.IndexOf(buffer, (byte)'\n', 0, filled) < 0)
        {
            long n;
            fixed (byte* p = buffer) n = Syscall.read(fd, p + filled, (ulong)(buffer.Length - filled));
            if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue; // interrupted: read again
            if (n <= 0) break; // end of input, or the one-second timeout (EAGAIN): a request that did not come
            filled += (int)n;
        }
        // A refused peer's request is read all the same: closing with it unread would reset the connection,
        // and the peer would never see why.
        if (!trusted)
        {
            onRefused($"refused a control connection from pid {pid} uid {uid}: only uid {ourUid} or root may control this gsupervisor");
            request.Reply("ERR permission denied: only the daemon's user or root may control it");
            return;
        }
        var newline = Array.IndexOf(buffer, (byte)'\n', 0, filled);
        if (newline < 0)
        {
            request.Reply("ERR malformed request");
            return;
        }
        request.Line = Encoding.UTF8.GetString(buffer, 0, newline).Trim();
        onRequest(request);
    }
}

/// <summary>One control connection: a request line, then the loop replies and closes it.</summary>
internal sealed class ControlRequest(int fd)
{
    public string Line { get; set; } = "";

    /// <summary>The connection's fd, which crosses an in-place upgrade while the request waits for its answer.</summary>
    public int SocketFd => fd;

    public bool Answered { get; private set; }

    /// <summary>Writes the reply and closes the connection.</summary>
    public void Reply(string text)
    {
        if (Answered) return;
        Answered = true;
        var bytes = Encoding.UTF8.GetBytes(text.EndsWith('\n') ? text : text + "\n");
        var sent = 0;
        while (sent < bytes.Length)
        {
            var n = Syscall.send(fd, bytes[sent..], (ulong)(bytes.Length - sent), MessageFlags.MSG_NOSIGNAL);
            if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue; // interrupted: send again
            if (n <= 0) break; // the peer is gone, or did not read for a second (SO_SNDTIMEO): it gets what fit
            sent += (int)n;
        }
        Syscall.close(fd);
    }
}
