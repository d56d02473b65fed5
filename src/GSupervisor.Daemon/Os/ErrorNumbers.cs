using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal static class ErrorNumbers
{
    public const int EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EACCES = 13, EEXIST = 17, ENOTDIR = 20,
        EISDIR = 21, EINVAL = 22, EPIPE = 32, EAFNOSUPPORT = 97, EADDRINUSE = 98, EADDRNOTAVAIL = 99,
        ECONNREFUSED = 111, ECHILD = 10, EAGAIN = 11, ENOEXEC = 8;

    /// <summary>errno of the last Mono.Posix call.</summary>
    public static int Last => (int)NativeConvert.FromErrno(Stdlib.GetLastError());

    public static string Describe(int errno) =>
        $"{Syscall.strerror(NativeConvert.ToErrno(errno))} (errno {errno})";
}
