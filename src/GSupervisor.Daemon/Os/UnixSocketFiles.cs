// Overview
// --------
// The rules for the file of a Unix socket the supervisor binds (listeners, the control socket), in one place:
//   * an existing file is replaced only when it is a socket nobody accepts on (stale); a live socket or any
//     other file is the caller's error to report;
//   * a socket is born with its mode: bind runs under a umask that leaves exactly that mode, so there is no
//     moment with a wider one and no chmod afterwards through a path someone could have swapped for a symlink.

using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal static class UnixSocketFiles
{
    public enum Existing
    {
        /// <summary>No file at the path (or a stale socket, now removed).</summary>
        Free,
        /// <summary>A socket that someone accepts on.</summary>
        Live,
        /// <summary>A file that is not a socket.</summary>
        NotASocket,
        /// <summary>Whether it is in use cannot be told, or a stale socket cannot be removed: see the errno.</summary>
        Unknown,
    }

    /// <summary>Looks at <paramref name="path"/> (without following a symlink) and removes it if it is a stale socket.</summary>
    public static (Existing State, int Errno) FreeUnlessLive(string path)
    {
        if (Syscall.lstat(path, out var st) != 0) return (Existing.Free, 0);
        if ((st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFSOCK) return (Existing.NotASocket, 0);
        var probe = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, UnixSocketFlags.SOCK_CLOEXEC, 0);
        try
        {
            if (Syscall.connect(probe, new SockaddrUn(path)) == 0) return (Existing.Live, 0);
            var errno = ErrorNumbers.Last;
            if (errno != ErrorNumbers.ECONNREFUSED) return (Existing.Unknown, errno);
        }
        finally
        {
            Syscall.close(probe);
        }
        return Syscall.unlink(path) == 0 ? (Existing.Free, 0) : (Existing.Unknown, ErrorNumbers.Last);
    }

    /// <summary>bind(2) with the socket file born with <paramref name="mode"/>; returns bind's result (errno in ErrorNumbers.Last).</summary>
    public static int Bind(int fd, SockaddrUn address, FilePermissions mode)
    {
        // The startup thread binds before any other thread of ours creates files, so the process-wide umask
        // changes nothing else.
        var old = Syscall.umask((FilePermissions)0x1FF & ~mode);
        try
        {
            return Syscall.bind(fd, address);
        }
        finally
        {
            Syscall.umask(old);
        }
    }
}
