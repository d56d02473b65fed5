// Overview
// --------
// Starts one child with posix_spawn, never Process.Start (which leaks every non-CLOEXEC fd, cannot place fds
// at 3.. and leaves SIGPIPE ignored). The file actions put the listeners at fds 3, 4, ..., give the child
// /dev/null as stdin, close every other fd and, when asked, change to the generation's directory; the attributes reset every signal to its default disposition,
// clear the signal mask and put the child in its own process group (so a terminal's Ctrl+C reaches only the
// supervisor).
//
// LISTEN_PID must equal the child's own pid, unknown before the spawn, so the child first runs the exec helper
// gsupervisor-exec (src/GSupervisor.Exec), which sets LISTEN_PID=getpid(), arms PR_SET_PDEATHSIG, switches the
// user and execs the command: the pid survives exec. The helper is opened once, at start, from beside the
// supervisor's binary, and every spawn runs that open file (as /proc/self/fd/N, the fd placed just above the
// listeners): a package upgrade that renames a new helper over the old one changes nothing for a running
// supervisor, and the two never come from different versions.
//
// posix_spawn runs on the supervisor's event-loop thread, which lives as long as the supervisor: the
// parent-death signal is tied to the thread that spawned the child.

using System.Text;

namespace GSupervisor.Daemon.Os;

/// <summary>What to start: the command (already resolved to a path), its environment and the listener fds.</summary>
internal sealed record SpawnRequest(
    string CommandPath,
    IReadOnlyList<string> Argv,
    IReadOnlyList<string> Environment,
    IReadOnlyList<int> ListenerFds,
    int DeathSignal,
    ChildUser? User,
    int StdoutFd = 1,
    int StderrFd = 2,
    string? WorkingDirectory = null);

/// <summary>The user the child runs as (--user/--group), switched to by the exec helper; Home is the user's home directory.</summary>
internal sealed record ChildUser(string Name, uint Uid, uint Gid, string Home);

internal sealed class SpawnException(int errno, string message) : Exception(message)
{
    public int Errno { get; } = errno;
}

internal sealed unsafe class Spawner : IDisposable
{
    public const string HelperName = "gsupervisor-exec";

    private readonly int _helperFd;

    private Spawner(string helperPath, int helperFd)
    {
        HelperPath = helperPath;
        _helperFd = helperFd;
    }

    /// <summary>The exec helper's path as it was opened at start.</summary>
    public string HelperPath { get; }

    /// <summary>
    /// Opens the exec helper beside this binary (the directory of the running executable, symlinks resolved) and
    /// keeps it open above <paramref name="reservedBelow"/>, where the children's fds go.
    /// </summary>
    public static Spawner Open(int reservedBelow)
    {
        var path = Installation.File(HelperName);
        if (!Directory.Exists("/proc/self/fd"))
            throw new StartupException(ExitCodes.OsFile, "/proc is not mounted; gsupervisor needs it to start children (mount proc on /proc)");
        var fd = Libc.open(path, Libc.O_RDONLY | Libc.O_CLOEXEC);
        if (fd < 0)
            throw new StartupException(ExitCodes.OsFile, $"cannot open {path}: {ErrorNumbers.Describe(ErrorNumbers.Last)}; it ships beside the gsupervisor binary: reinstall gsupervisor");
        var moved = Libc.fcntl(fd, Libc.F_DUPFD_CLOEXEC, reservedBelow);
        Libc.close(fd);
        if (moved < 0)
            throw new StartupException(ExitCodes.OsError, $"cannot move the exec helper's fd: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        return new Spawner(path, moved);
    }

    /// <summary>Spawns the child and returns its pid; throws <see cref="SpawnException"/> with errno on failure.</summary>
    public int Spawn(SpawnRequest request)
    {
        var helperTarget = 3 + request.ListenerFds.Count; // just above the listeners; the helper closes it on exec
        var argv = new List<string>
        {
            HelperName,
            request.DeathSignal.ToString(System.Globalization.CultureInfo.InvariantCulture),
            System.Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture),
            request.ListenerFds.Count.ToString(System.Globalization.CultureInfo.InvariantCulture),
            request.User is { } user ? $"{user.Name}:{user.Uid}:{user.Gid}" : "-",
            request.CommandPath,
        };
        argv.AddRange(request.Argv);

        using var nativeArgv = new NativeStringArray(argv);
        using var nativeEnv = new NativeStringArray(request.Environment);
        var path = Encoding.UTF8.GetBytes($"/proc/self/fd/{helperTarget}\0");

        var actions = stackalloc byte[Libc.FileActionsBytes];
        var attr = stackalloc byte[Libc.SpawnAttrBytes];
        var allSignals = stackalloc byte[Libc.SigsetBytes];
        var noSignals = stackalloc byte[Libc.SigsetBytes];

        Check(Libc.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init");
        try
        {
            Check(Libc.posix_spawnattr_init(attr), "posix_spawnattr_init");
            try
            {
                Check(Libc.posix_spawn_file_actions_addopen(actions, 0, "/dev/null", Libc.O_RDONLY, 0), "addopen /dev/null");
                // Output first: the pipe fds may sit in the listeners' target range, which the next actions overwrite.
                if (request.StdoutFd != 1) Check(Libc.posix_spawn_file_actions_adddup2(actions, request.StdoutFd, 1), "adddup2 stdout");
                if (request.StderrFd != 2) Check(Libc.posix_spawn_file_actions_adddup2(actions, request.StderrFd, 2), "adddup2 stderr");
                for (var i = 0; i < request.ListenerFds.Count; i++)
                {
                    var source = request.ListenerFds[i];
                    if (source <= helperTarget)
                        throw new InvalidOperationException($"listener fd {source} lies in the child's target range");
                    Check(Libc.posix_spawn_file_actions_adddup2(actions, source, 3 + i), "adddup2");
                }
                if (_helperFd <= helperTarget)
                    throw new InvalidOperationException($"the exec helper's fd {_helperFd} lies in the child's target range");
                Check(Libc.posix_spawn_file_actions_adddup2(actions, _helperFd, helperTarget), "adddup2 helper");
                Check(Libc.posix_spawn_file_actions_addclosefrom_np(actions, helperTarget + 1), "addclosefrom_np");
                if (request.WorkingDirectory is { } directory)
                    Check(Libc.posix_spawn_file_actions_addchdir_np(actions, directory), "addchdir_np");

                Libc.sigfillset(allSignals);
                Libc.sigemptyset(noSignals);
                Check(Libc.posix_spawnattr_setsigdefault(attr, allSignals), "setsigdefault");
                Check(Libc.posix_spawnattr_setsigmask(attr, noSignals), "setsigmask");
                Check(Libc.posix_spawnattr_setpgroup(attr, 0), "setpgroup");
                Check(Libc.posix_spawnattr_setflags(attr,
                    Libc.POSIX_SPAWN_SETSIGDEF | Libc.POSIX_SPAWN_SETSIGMASK | Libc.POSIX_SPAWN_SETPGROUP), "setflags");

                fixed (byte* p = path)
                {
                    var rc = Libc.posix_spawn(out var pid, p, actions, attr, nativeArgv.Pointer, nativeEnv.Pointer);
                    if (rc != 0)
                        throw new SpawnException(rc, $"posix_spawn {HelperPath}{(request.WorkingDirectory is { } d ? $" in {d}" : "")}: {ErrorNumbers.Describe(rc)}");
                    return pid;
                }
            }
            finally
            {
                Libc.posix_spawnattr_destroy(attr);
            }
        }
        finally
        {
            Libc.posix_spawn_file_actions_destroy(actions);
        }
    }

    public void Dispose() => Libc.close(_helperFd);

    private static void Check(int rc, string what)
    {
        if (rc != 0) throw new SpawnException(rc, $"{what}: {ErrorNumbers.Describe(rc)}");
    }
}
