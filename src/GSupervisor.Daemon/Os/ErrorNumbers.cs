using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal static class ErrorNumbers
{
    public const int EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EACCES = 13, EEXIST = 17, ENOTDIR = 20,
        EISDIR = 21, EINVAL = 22, EPIPE = 32, EAFNOSUPPORT = 97, EADDRINUSE = 98, EADDRNOTAVAIL = 99,
        ECONNREFUSED = 111, ECHILD = 10, EAGAIN = 11, ENOEXEC = 8, EROFS = 30;

    /// <summary>
    /// errno of the last libc call, whether through Mono.Posix or a LibraryImport of Libc: both keep it with
    /// SetLastError, which is what Mono.Posix's Stdlib.GetLastError() reads too. The one way to read it.
    /// </summary>
    public static int Last => System.Runtime.InteropServices.Marshal.GetLastPInvokeError();

    public static string Describe(int errno) =>
        $"{Syscall.strerror(NativeConvert.ToErrno(errno))} (errno {errno})";
}
