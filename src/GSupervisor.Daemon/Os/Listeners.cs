// Overview
// --------
// Binds the listening sockets once, at start, and keeps them as raw fds for the supervisor's whole life.
// The supervisor never accepts, shuts down or closes them while children run: the accept queue belongs to
// the socket, so it outlives every generation. Each fd is CLOEXEC (only the spawner hands it on, at 3..)
// and is moved above the child's target range so the spawn's dup2 actions never collide.
//
// ":PORT" binds [::] with IPV6_V6ONLY off (v4-mapped), or 0.0.0.0 where IPv6 is unavailable. A stale Unix
// socket file (nobody accepting) is replaced; a live one is left alone and reported.

using System.Net;
using System.Net.Sockets;
using GSupervisor.Core;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal sealed record BoundListener(ListenSpec Spec, int Fd, string Address, string? UnixPathToRemove, ulong UnixInode);

internal static class Listeners
{
    public static List<BoundListener> BindAll(IReadOnlyList<ListenSpec> specs, int backlog)
    {
        var bound = new List<BoundListener>();
        try
        {
            var passed = SystemdSockets.FromEnvironment();
            foreach (var spec in specs)
            {
                if (spec.Kind == ListenKind.Systemd) bound.AddRange(SystemdSockets.Adopt(spec, passed));
                else bound.Add(Bind(spec, backlog));
            }
            SystemdSockets.CloseOriginals(passed);
            // Move every fd above 3 + count, where the child's copies go.
            for (var i = 0; i < bound.Count; i++)
            {
                var moved = Libc.fcntl(bound[i].Fd, Libc.F_DUPFD_CLOEXEC, 3 + bound.Count + 16);
                if (moved < 0) throw new StartupException(ExitCodes.OsError, $"cannot move listener fd: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
                Syscall.close(bound[i].Fd);
                bound[i] = bound[i] with { Fd = moved };
            }
            return bound;
        }
        catch
        {
            CloseAll(bound);
            throw;
        }
    }

    /// <summary>
    /// Binds one socket of the supervisor's own (--metrics) above the children's fds. Unlike BindAll it leaves
    /// the fds systemd passed alone: by now their numbers belong to other sockets of the supervisor's.
    /// </summary>
    public static BoundListener BindOwn(ListenSpec spec, int backlog)
    {
        var bound = Bind(spec, backlog);
        var moved = Libc.fcntl(bound.Fd, Libc.F_DUPFD_CLOEXEC, 3 + 16);
        if (moved < 0)
        {
            var errno = ErrorNumbers.Last;
            CloseAll([bound]);
            throw new StartupException(ExitCodes.OsError, $"cannot move the fd of {spec.Text}: {ErrorNumbers.Describe(errno)}");
        }
        Syscall.close(bound.Fd);
        return bound with { Fd = moved };
    }

    public static void CloseAll(IEnumerable<BoundListener> listeners)
    {
        foreach (var l in listeners)
        {
            Syscall.close(l.Fd);
            if (l.UnixPathToRemove is { } path && Syscall.lstat(path, out var st) == 0 && st.st_ino == l.UnixInode)
                Syscall.unlink(path);
        }
    }

    private static BoundListener Bind(ListenSpec spec, int backlog) => spec.Kind switch
    {
        ListenKind.Unix => BindUnix(spec, backlog),
        ListenKind.TcpAnyAddress => BindAnyAddress(spec, backlog),
        _ => BindTcp(spec, spec.Address!, backlog),
    };

    private static BoundListener BindAnyAddress(ListenSpec spec, int backlog)
    {
        try
        {
            return BindTcp(spec, IPAddress.IPv6Any, backlog, dualStack: true);
        }
        catch (Ipv6UnavailableException)
        {
            return BindTcp(spec, IPAddress.Any, backlog);
        }
    }

    private sealed class Ipv6UnavailableException : Exception;

    private static BoundListener BindTcp(ListenSpec spec, IPAddress address, int backlog, bool dualStack = false)
    {
        var v6 = address.AddressFamily == AddressFamily.InterNetworkV6;
        var fd = Syscall.socket(v6 ? UnixAddressFamily.AF_INET6 : UnixAddressFamily.AF_INET,
            UnixSocketType.SOCK_STREAM, UnixSocketFlags.SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            var errno = ErrorNumbers.Last;
            if (dualStack && errno == ErrorNumbers.EAFNOSUPPORT) throw new Ipv6UnavailableException();
            throw new StartupException(ExitCodes.OsError, $"cannot create a socket for {spec}: {ErrorNumbers.Describe(errno)}");
        }
        try
        {
            Syscall.setsockopt(fd, UnixSocketProtocol.SOL_SOCKET, UnixSocketOptionName.SO_REUSEADDR, 1);
            if (v6) Libc.SetIntOption(fd, Libc.IPPROTO_IPV6, Libc.IPV6_V6ONLY, dualStack ? 0 : 1);
            Sockaddr sockaddr = v6
                ? new SockaddrIn6 { sin6_family = UnixAddressFamily.AF_INET6, sin6_port = Syscall.htons((ushort)spec.Port), sin6_addr = NativeConvert.ToIn6Addr(address), sin6_scope_id = (uint)address.ScopeId }
                : new SockaddrIn { sin_family = UnixAddressFamily.AF_INET, sin_port = Syscall.htons((ushort)spec.Port), sin_addr = NativeConvert.ToInAddr(address) };
            if (Syscall.bind(fd, sockaddr) != 0)
            {
                var errno = ErrorNumbers.Last;
                if (dualStack && errno is ErrorNumbers.EADDRNOTAVAIL or ErrorNumbers.EAFNOSUPPORT) throw new Ipv6UnavailableException();
                throw BindError(spec, errno);
            }
            if (Syscall.listen(fd, backlog) != 0)
                throw BindError(spec, ErrorNumbers.Last);
            return new BoundListener(spec, fd, LocalAddress(fd, v6), null, 0);
        }
        catch
        {
            Syscall.close(fd);
            throw;
        }
    }

    internal static string LocalAddress(int fd, bool v6)
    {
        if (v6)
        {
            var sa = new SockaddrIn6();
            Syscall.getsockname(fd, sa);
            var ip = NativeConvert.ToIPAddress(sa.sin6_addr);
            return $"[{ip}]:{Syscall.ntohs(sa.sin6_port)}";
        }
        var sa4 = new SockaddrIn();
        Syscall.getsockname(fd, sa4);
        return $"{NativeConvert.ToIPAddress(sa4.sin_addr)}:{Syscall.ntohs(sa4.sin_port)}";
    }

    private static StartupException BindError(ListenSpec spec, int errno) => errno switch
    {
        ErrorNumbers.EADDRINUSE => new StartupException(ExitCodes.Unavailable,
            $"cannot listen on {spec.Text}: the address is already in use; stop the other process (see: ss -ltnp) or choose another port"),
        ErrorNumbers.EADDRNOTAVAIL => new StartupException(ExitCodes.Unavailable,
            $"cannot listen on {spec.Text}: the address is not available on this host; use an address of one of its interfaces"),
        ErrorNumbers.EACCES or ErrorNumbers.EPERM when spec.Kind != ListenKind.Unix => new StartupException(ExitCodes.NoPermission,
            $"cannot listen on {spec.Text}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE (or let systemd pass the socket)"),
        ErrorNumbers.EACCES or ErrorNumbers.EPERM => new StartupException(ExitCodes.NoPermission,
            $"cannot listen on {spec.Text}: permission denied; the user running gsupervisor must be able to write to {Path.GetDirectoryName(spec.UnixPath)}"),
        ErrorNumbers.ENOENT or ErrorNumbers.ENOTDIR => new StartupException(ExitCodes.CannotCreate,
            $"cannot listen on {spec.Text}: directory {Path.GetDirectoryName(spec.UnixPath)} does not exist; create it first"),
        _ => new StartupException(ExitCodes.OsError, $"cannot listen on {spec.Text}: {ErrorNumbers.Describe(errno)}"),
    };

    private static BoundListener BindUnix(ListenSpec spec, int backlog)
    {
        var path = spec.UnixPath!;
        var isAbstract = path.StartsWith('@');
        if (!isAbstract) RemoveStaleSocket(spec, path);

        var fd = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, UnixSocketFlags.SOCK_CLOEXEC, 0);
        if (fd < 0) throw new StartupException(ExitCodes.OsError, $"cannot create a socket for {spec}: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        try
        {
            var address = isAbstract ? new SockaddrUn(path[1..], linuxAbstractNamespace: true) : new SockaddrUn(path);
            // Born with its mode (default 0666 less the umask, as a plain bind would make it).
            var bound = isAbstract || spec.UnixMode is not { } mode
                ? Syscall.bind(fd, address)
                : UnixSocketFiles.Bind(fd, address, (FilePermissions)mode);
            if (bound != 0) throw BindError(spec, ErrorNumbers.Last);
            ulong inode = 0;
            if (!isAbstract && Syscall.lstat(path, out var st) == 0) inode = st.st_ino;
            if (Syscall.listen(fd, backlog) != 0) throw BindError(spec, ErrorNumbers.Last);
            return new BoundListener(spec, fd, "unix:" + path, isAbstract ? null : path, inode);
        }
        catch
        {
            Syscall.close(fd);
            throw;
        }
    }

    /// <summary>A socket file nobody accepts on is stale and is removed; a live one or a non-socket is an error.</summary>
    private static void RemoveStaleSocket(ListenSpec spec, string path)
    {
        switch (UnixSocketFiles.FreeUnlessLive(path))
        {
            case (UnixSocketFiles.Existing.NotASocket, _):
                throw new StartupException(ExitCodes.CannotCreate,
                    $"cannot listen on {spec.Text}: {path} exists and is not a socket; remove it or choose another path");
            case (UnixSocketFiles.Existing.Live, _):
                throw new StartupException(ExitCodes.Unavailable,
                    $"cannot listen on {spec.Text}: another process is accepting on {path}; stop it or choose another path");
            case (UnixSocketFiles.Existing.Unknown, var errno):
                throw new StartupException(errno is ErrorNumbers.EACCES or ErrorNumbers.EPERM ? ExitCodes.NoPermission : ExitCodes.OsError,
                    $"cannot listen on {spec.Text}: cannot tell whether {path} is in use, or cannot remove it: {ErrorNumbers.Describe(errno)}");
        }
    }
}
