// Overview
// --------
// The libc calls Mono.Posix does not offer (posix_spawn with file actions and signal attributes, prctl,
// epoll, signal dispositions, socket options), one LibraryImport per method with its errno handling
// beside it. Everything else goes through Mono.Unix.Native.Syscall. Linux/glibc only; struct sizes are padded
// generously where glibc keeps them opaque.

using System.Runtime.InteropServices;

namespace GSupervisor.Daemon.Os;

internal static unsafe partial class Libc
{
    private const string Lib = "libc";

    public const int POSIX_SPAWN_SETPGROUP = 0x02;
    public const int POSIX_SPAWN_SETSIGDEF = 0x04;
    public const int POSIX_SPAWN_SETSIGMASK = 0x08;
    public const int PR_SET_CHILD_SUBREAPER = 36;
    public const int O_RDONLY = 0;
    public const int IPPROTO_IPV6 = 41;
    public const int IPV6_V6ONLY = 26;
    public const int SOL_SOCKET = 1;
    public const int SO_PEERCRED = 17;
    public const int SO_PASSCRED = 16;

    // glibc: posix_spawnattr_t is 336 bytes and posix_spawn_file_actions_t 80 bytes on x86-64 and arm64;
    // sigset_t is 128 bytes. Allocate more than enough.
    public const int SpawnAttrBytes = 1024;
    public const int FileActionsBytes = 512;
    public const int SigsetBytes = 128;

    [LibraryImport(Lib, EntryPoint = "posix_spawn_file_actions_init")]
    public static partial int posix_spawn_file_actions_init(void* actions);

    [LibraryImport(Lib, EntryPoint = "posix_spawn_file_actions_destroy")]
    public static partial int posix_spawn_file_actions_destroy(void* actions);

    [LibraryImport(Lib, EntryPoint = "posix_spawn_file_actions_adddup2")]
    public static partial int posix_spawn_file_actions_adddup2(void* actions, int fd, int newfd);

    [LibraryImport(Lib, EntryPoint = "posix_spawn_file_actions_addopen", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int posix_spawn_file_actions_addopen(void* actions, int fd, string path, int oflag, uint mode);

    /// <summary>glibc 2.34+: close every fd from <paramref name="lowfd"/> up in the child.</summary>
    [LibraryImport(Lib, EntryPoint = "posix_spawn_file_actions_addclosefrom_np")]
    public static partial int posix_spawn_file_actions_addclosefrom_np(void* actions, int lowfd);

    /// <summary>glibc 2.29+: the child changes to <paramref name="path"/> before it execs (the file actions run in order).</summary>
    [LibraryImport(Lib, EntryPoint = "posix_spawn_file_actions_addchdir_np", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int posix_spawn_file_actions_addchdir_np(void* actions, string path);

    [LibraryImport(Lib, EntryPoint = "realpath", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial byte* realpath(string path, byte* resolved);

    [LibraryImport(Lib, EntryPoint = "free")]
    private static partial void free(byte* pointer);

    /// <summary>The path with every symlink resolved, as it resolves now; null with errno when it does not.</summary>
    public static string? RealPath(string path)
    {
        var resolved = realpath(path, null);
        if (resolved is null) return null;
        try
        {
            return System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)resolved);
        }
        finally
        {
            free(resolved);
        }
    }

    [LibraryImport(Lib, EntryPoint = "posix_spawnattr_init")]
    public static partial int posix_spawnattr_init(void* attr);

    [LibraryImport(Lib, EntryPoint = "posix_spawnattr_destroy")]
    public static partial int posix_spawnattr_destroy(void* attr);

    [LibraryImport(Lib, EntryPoint = "posix_spawnattr_setflags")]
    public static partial int posix_spawnattr_setflags(void* attr, short flags);

    [LibraryImport(Lib, EntryPoint = "posix_spawnattr_setsigdefault")]
    public static partial int posix_spawnattr_setsigdefault(void* attr, void* sigset);

    [LibraryImport(Lib, EntryPoint = "posix_spawnattr_setsigmask")]
    public static partial int posix_spawnattr_setsigmask(void* attr, void* sigset);

    [LibraryImport(Lib, EntryPoint = "posix_spawnattr_setpgroup")]
    public static partial int posix_spawnattr_setpgroup(void* attr, int pgroup);

    /// <summary>Returns 0 or an errno value (not -1): glibc reports exec failures of the child here.</summary>
    [LibraryImport(Lib, EntryPoint = "posix_spawn")]
    public static partial int posix_spawn(out int pid, byte* path, void* fileActions, void* attr, byte** argv, byte** envp);

    [LibraryImport(Lib, EntryPoint = "sigfillset")]
    public static partial int sigfillset(void* set);

    [LibraryImport(Lib, EntryPoint = "sigemptyset")]
    public static partial int sigemptyset(void* set);

    [LibraryImport(Lib, EntryPoint = "sigaddset")]
    public static partial int sigaddset(void* set, int signum);

    /// <summary>Changes the calling thread's signal mask; returns 0 or an errno value.</summary>
    [LibraryImport(Lib, EntryPoint = "pthread_sigmask")]
    public static partial int pthread_sigmask(int how, void* set, void* oldSet);

    /// <summary>Sets a signal's disposition; <paramref name="handler"/> 0 is SIG_DFL.</summary>
    [LibraryImport(Lib, EntryPoint = "signal", SetLastError = true)]
    public static partial nint signal(int signum, nint handler);

    [LibraryImport(Lib, EntryPoint = "prctl", SetLastError = true)]
    public static partial int prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    [LibraryImport(Lib, EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int setsockopt(int fd, int level, int name, int* value, uint length);

    [LibraryImport(Lib, EntryPoint = "getsockopt", SetLastError = true)]
    public static partial int getsockopt(int fd, int level, int name, void* value, uint* length);

    public const int F_DUPFD_CLOEXEC = 1030;

    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int fcntl(int fd, int command, int argument);

    public const int O_CLOEXEC = 0x80000;

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string path, int flags);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport(Lib, EntryPoint = "pipe2", SetLastError = true)]
    public static partial int pipe2([System.Runtime.InteropServices.Out] int[] fds, int flags);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    private static partial nint write(int fd, byte* buffer, nuint count);

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    private static partial nint read(int fd, byte* buffer, nuint count);

    /// <summary>read(2), again after EINTR; -1 with errno set on error.</summary>
    public static int read(int fd, byte* buffer, int count)
    {
        nint n;
        while ((n = read(fd, buffer, (nuint)count)) < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR)
        {
        }
        return (int)n;
    }

    public const int F_GETFD = 1, F_SETFD = 2, FD_CLOEXEC = 1, F_GETFL = 3, F_SETFL = 4, O_NONBLOCK = 0x800;

    /// <summary>Sets or clears FD_CLOEXEC on <paramref name="fd"/>; returns 0 or -1.</summary>
    public static int SetCloseOnExec(int fd, bool on)
    {
        var flags = fcntl(fd, F_GETFD, 0);
        if (flags < 0) return -1;
        return fcntl(fd, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC);
    }

    /// <summary>Sets O_NONBLOCK on <paramref name="fd"/> (a file status flag: it goes with the open file, across exec too).</summary>
    public static int SetNonBlocking(int fd)
    {
        var flags = fcntl(fd, F_GETFL, 0);
        return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    }

    /// <summary>Writes all of <paramref name="bytes"/> (again after EINTR); false if the fd took fewer. Plain libc, for code that runs when Mono.Posix may not load.</summary>
    public static bool WriteAll(int fd, ReadOnlySpan<byte> bytes)
    {
        fixed (byte* p = bytes)
        {
            var written = 0;
            while (written < bytes.Length)
            {
                var n = write(fd, p + written, (nuint)(bytes.Length - written));
                if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
                if (n <= 0) return false;
                written += (int)n;
            }
        }
        return true;
    }

    [LibraryImport(Lib, EntryPoint = "lseek", SetLastError = true)]
    public static partial long lseek(int fd, long offset, int whence);

    [LibraryImport(Lib, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int memfd_create(string name, uint flags);

    /// <summary>One line to <paramref name="fd"/> with a single write(2), for messages that cannot wait for the log.</summary>
    public static void WriteLine(int fd, string line)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(line + "\n");
        fixed (byte* p = bytes) write(fd, p, (nuint)bytes.Length);
    }

    public const int EPOLL_CLOEXEC = 0x80000;
    private const int EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2;
    private const uint EPOLLIN = 0x001;

    /// <summary>struct epoll_event: packed (12 bytes) on x86-64, naturally aligned (16) elsewhere.</summary>
    public static int EpollEventBytes { get; } = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 12 : 16;
    private static int EpollDataOffset => EpollEventBytes == 12 ? 4 : 8;

    [LibraryImport(Lib, EntryPoint = "epoll_create1", SetLastError = true)]
    public static partial int epoll_create1(int flags);

    [LibraryImport(Lib, EntryPoint = "epoll_ctl", SetLastError = true)]
    private static partial int epoll_ctl(int epfd, int op, int fd, byte* eventData);

    [LibraryImport(Lib, EntryPoint = "epoll_wait", SetLastError = true)]
    public static partial int epoll_wait(int epfd, byte* events, int maxEvents, int timeout);

    /// <summary>Watches <paramref name="fd"/> for input (and hang-up), with the fd itself as the event's data.</summary>
    public static int EpollAdd(int epfd, int fd)
    {
        var ev = stackalloc byte[16];
        new Span<byte>(ev, 16).Clear();
        *(uint*)ev = EPOLLIN;
        *(long*)(ev + EpollDataOffset) = fd;
        return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, ev);
    }

    public static int EpollRemove(int epfd, int fd) => epoll_ctl(epfd, EPOLL_CTL_DEL, fd, null);

    /// <summary>The fd of the <paramref name="index"/>th event that epoll_wait returned (see EpollAdd).</summary>
    public static int EpollEventFd(byte* events, int index) => (int)*(long*)(events + index * EpollEventBytes + EpollDataOffset);

    [LibraryImport(Lib, EntryPoint = "execve", SetLastError = true)]
    public static partial int execve(byte* path, byte** argv, byte** envp);

    [LibraryImport(Lib, EntryPoint = "isatty")]
    public static partial int isatty(int fd);

    /// <summary>Peer credentials of a connected Unix socket (SO_PEERCRED).</summary>
    public static bool TryGetPeerCredentials(int fd, out int pid, out int uid, out int gid)
    {
        var creds = stackalloc int[3];
        uint length = 12;
        var rc = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, creds, &length);
        pid = creds[0];
        uid = creds[1];
        gid = creds[2];
        return rc == 0;
    }

    public static int SetIntOption(int fd, int level, int name, int value) =>
        setsockopt(fd, level, name, &value, sizeof(int));
}

/// <summary>A NULL-terminated array of NUL-terminated UTF-8 strings in native memory (argv, envp).</summary>
internal sealed unsafe class NativeStringArray : IDisposable
{
    private readonly nint[] _strings;
    public byte** Pointer { get; private set; }

    public NativeStringArray(IReadOnlyList<string> values)
    {
        _strings = new nint[values.Count];
        Pointer = (byte**)NativeMemory.AllocZeroed((nuint)(values.Count + 1), (nuint)sizeof(nint));
        for (var i = 0; i < values.Count; i++)
        {
            _strings[i] = Marshal.StringToCoTaskMemUTF8(values[i]);
            Pointer[i] = (byte*)_strings[i];
        }
    }

    public void Dispose()
    {
        foreach (var s in _strings) Marshal.FreeCoTaskMem(s);
        if (Pointer != null) NativeMemory.Free(Pointer);
        Pointer = null;
    }
}
