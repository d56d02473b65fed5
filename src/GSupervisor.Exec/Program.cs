// Overview
// --------
// gsupervisor-exec: the first moments of every child. The supervisor spawns it (from an fd it opened at its
// own start, so a package upgrade that replaces the file on disk never mixes versions) as
//
//   gsupervisor-exec DEATHSIG SUPERVISOR_PID NFDS USER PATH ARGV0 ARGS...
//
// with the listeners at fds 3 .. 3+NFDS-1, and this code, in the child's process: (0) switches to USER
// (name:uid:gid, or "-") with its supplementary groups; (1) arms PR_SET_PDEATHSIG (after the switch, which
// would clear it) so the child gets DEATHSIG if the supervisor dies, and checks the supervisor did not die
// first; (2) sets LISTEN_PID to its own pid, which the command keeps across exec; (3) undoes what it inherited
// from the supervisor's runtime: ignored signals (SIGPIPE), a signal mask, fds from 3+NFDS up (its own binary
// among them) left open; and (4) execs PATH. If that fails it writes one line to stderr and exits 127 (not
// found) or 126 (anything else), as a shell does.
//
// Everything here is plain libc through direct calls, on native memory: no strings of the runtime, no
// console, no reflection. Its cost over a bare exec is what `make bench` reports as the per-spawn cost.

using System.Runtime.InteropServices;
using System.Text;

namespace GSupervisor.Exec;

internal static unsafe partial class Program
{
    private const int PR_SET_PDEATHSIG = 1;
    private const int SIG_SETMASK = 2;
    private const uint CLOSE_RANGE_CLOEXEC = 1u << 2;
    private const int F_SETFD = 2, FD_CLOEXEC = 1;
    private const int ENOENT = 2;
    private const int SigactionBytes = 256, SigsetBytes = 128;

    private static int Main(string[] args)
    {
        if (args.Length < 6 || !TryParse(args[0], out int deathSignal) || !TryParse(args[1], out int supervisorPid) || !TryParse(args[2], out int listenerCount))
            return Fail(64, "gsupervisor-exec is run by gsupervisor, not by hand; see gsupervisor --help");
        var user = args[3];
        var path = args[4];

        if (user != "-" && SwitchUser(user) is { } failure)
            return Fail(126, $"cannot run the child as {user.Split(':')[0]}: {failure}");
        prctl(PR_SET_PDEATHSIG, (nuint)deathSignal, 0, 0, 0);
        if (getppid() != supervisorPid)
            return Fail(128 + deathSignal, "the supervisor exited before its child could start");

        var argv = ToNative(args.AsSpan(5));
        var envp = EnvironmentWithListenPid(listenerCount);
        var nativePath = Utf8(path);

        ResetIgnoredSignals();
        var empty = stackalloc byte[SigsetBytes];
        sigemptyset(empty);
        sigprocmask(SIG_SETMASK, empty, null);
        MarkCloseOnExecFrom(3 + listenerCount);

        execve(nativePath, argv, envp);
        var errno = Marshal.GetLastPInvokeError();
        return Fail(errno == ENOENT ? 127 : 126, $"cannot execute {path}: {Marshal.PtrToStringUTF8((nint)strerror(errno))} (errno {errno})");
    }

    /// <summary>This process's environment (the one the supervisor built) with LISTEN_PID set to our pid, or dropped without listeners.</summary>
    private static byte** EnvironmentWithListenPid(int listenerCount)
    {
        var environ = *(byte***)dlsym(null, "environ\0"u8);
        var count = 0;
        while (environ[count] != null) count++;
        var result = (byte**)NativeMemory.AllocZeroed((nuint)(count + 2), (nuint)sizeof(nint));
        var kept = 0;
        for (var i = 0; i < count; i++)
            if (!StartsWith(environ[i], "LISTEN_PID="u8)) result[kept++] = environ[i];
        if (listenerCount > 0) result[kept] = Utf8("LISTEN_PID=" + getpid());
        return result;
    }

    private static bool StartsWith(byte* text, ReadOnlySpan<byte> prefix)
    {
        for (var i = 0; i < prefix.Length; i++)
            if (text[i] != prefix[i]) return false; // a shorter text stops at its NUL, which matches no prefix byte
        return true;
    }

    /// <summary>initgroups, setgid, setuid; null on success, else the reason.</summary>
    private static string? SwitchUser(string spec)
    {
        var parts = spec.Split(':');
        if (parts.Length != 3 || !TryParse(parts[1], out uint uid) || !TryParse(parts[2], out uint gid)) return "malformed user " + spec;
        if (initgroups(Utf8(parts[0]), gid) != 0) return "initgroups: " + LastError();
        if (setgid(gid) != 0) return "setgid: " + LastError();
        if (setuid(uid) != 0) return "setuid: " + LastError();
        return null;
    }

    /// <summary>
    /// execve keeps ignored dispositions (the supervisor's runtime ignores SIGPIPE) and resets handled ones;
    /// posix_spawn already reset every signal, but the runtime's start-up here ignores some again.
    /// </summary>
    private static void ResetIgnoredSignals()
    {
        const nint SIG_IGN = 1;
        var action = stackalloc byte[SigactionBytes];
        for (var signal = 1; signal <= 64; signal++)
        {
            if (signal is 9 or 19) continue;
            if (signal is 32 or 33)
            {
                ResetSignalRaw(signal); // glibc's own signals: its wrappers refuse them
                continue;
            }
            if (sigaction(signal, null, action) == 0 && *(nint*)action == SIG_IGN) signal_(signal, 0);
        }
    }

    /// <summary>rt_sigaction(signum, SIG_DFL) as a raw system call, which also reaches signals 32 and 33.</summary>
    private static void ResetSignalRaw(int signum)
    {
        long number = RuntimeInformation.ProcessArchitecture switch { Architecture.X64 => 13, Architecture.Arm64 => 134, _ => -1 };
        if (number < 0) return;
        var kernelSigaction = stackalloc byte[64];
        new Span<byte>(kernelSigaction, 64).Clear();
        syscall(number, signum, kernelSigaction, null, 8);
    }

    private static void MarkCloseOnExecFrom(int first)
    {
        if (close_range((uint)first, uint.MaxValue, CLOSE_RANGE_CLOEXEC) == 0) return;
        // Kernels before 5.11: the open fds, one by one (the listing's own fd is CLOEXEC already).
        foreach (var entry in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
            if (int.TryParse(Path.GetFileName(entry), out var fd) && fd >= first) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }

    private static int Fail(int code, string message)
    {
        var bytes = Encoding.UTF8.GetBytes("gsupervisor: " + message + "\n");
        fixed (byte* p = bytes) write(2, p, (nuint)bytes.Length);
        return code;
    }

    private static string LastError()
    {
        var errno = Marshal.GetLastPInvokeError();
        return $"{Marshal.PtrToStringUTF8((nint)strerror(errno))} (errno {errno})";
    }

    /// <summary>A decimal number up to int.MaxValue (a signal, a pid, a count).</summary>
    private static bool TryParse(string text, out int value)
    {
        var ok = TryParse(text, out uint number) && number <= int.MaxValue;
        value = ok ? (int)number : 0;
        return ok;
    }

    /// <summary>A decimal number up to uint.MaxValue (a uid or gid: id-mapped ones go above 2^31).</summary>
    private static bool TryParse(string text, out uint value)
    {
        value = 0;
        if (text.Length is 0 or > 10) return false;
        ulong number = 0;
        foreach (var c in text)
        {
            if (c is < '0' or > '9') return false;
            number = number * 10 + (ulong)(c - '0');
        }
        if (number > uint.MaxValue) return false;
        value = (uint)number;
        return true;
    }

    /// <summary>A NUL-terminated UTF-8 copy in native memory, never freed: the process execs or exits next.</summary>
    private static byte* Utf8(string text)
    {
        var length = Encoding.UTF8.GetByteCount(text);
        var p = (byte*)NativeMemory.Alloc((nuint)length + 1);
        Encoding.UTF8.GetBytes(text, new Span<byte>(p, length));
        p[length] = 0;
        return p;
    }

    private static byte** ToNative(ReadOnlySpan<string> values)
    {
        var array = (byte**)NativeMemory.AllocZeroed((nuint)values.Length + 1, (nuint)sizeof(nint));
        for (var i = 0; i < values.Length; i++) array[i] = Utf8(values[i]);
        return array;
    }

    [LibraryImport("libc")] private static partial int prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);
    [LibraryImport("libc")] private static partial int getppid();
    [LibraryImport("libc")] private static partial int getpid();
    [LibraryImport("libc", SetLastError = true)] private static partial int initgroups(byte* user, uint group);
    [LibraryImport("libc", SetLastError = true)] private static partial int setgid(uint gid);
    [LibraryImport("libc", SetLastError = true)] private static partial int setuid(uint uid);
    [LibraryImport("libc")] private static partial void* dlsym(void* handle, ReadOnlySpan<byte> symbol);
    [LibraryImport("libc")] private static partial int sigemptyset(void* set);
    [LibraryImport("libc")] private static partial int sigprocmask(int how, void* set, void* oldset);
    [LibraryImport("libc")] private static partial int sigaction(int signum, void* action, void* oldAction);
    [LibraryImport("libc", EntryPoint = "signal")] private static partial nint signal_(int signum, nint handler);
    [LibraryImport("libc")] private static partial long syscall(long number, long a1, void* a2, void* a3, long a4);
    [LibraryImport("libc")] private static partial int close_range(uint first, uint last, uint flags);
    [LibraryImport("libc")] private static partial int fcntl(int fd, int command, int argument);
    [LibraryImport("libc", SetLastError = true)] private static partial int execve(byte* path, byte** argv, byte** envp);
    [LibraryImport("libc")] private static partial byte* strerror(int errnum);
    [LibraryImport("libc")] private static partial nint write(int fd, byte* buffer, nuint count);
}
