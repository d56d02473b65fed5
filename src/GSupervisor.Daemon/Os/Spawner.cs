// Overview
// --------
// Starts one child with posix_spawn, never Process.Start (which leaks every non-CLOEXEC fd, cannot place fds
// at 3.. and leaves SIGPIPE ignored). The file actions put the listeners at fds 3, 4, ..., give the child
// /dev/null as stdin and close every other fd; the attributes reset every signal to its default disposition,
// clear the signal mask and put the child in its own process group (so a terminal's Ctrl+C reaches only the
// supervisor).
//
// LISTEN_PID must equal the child's own pid, unknown before the spawn, so the child is this same binary in
// its exec-shim mode (ExecShim), which sets LISTEN_PID=getpid(), arms PR_SET_PDEATHSIG and execs the command:
// the pid survives exec. posix_spawn runs on the supervisor's event-loop thread, which lives as long as the
// supervisor: the parent-death signal is tied to the thread that spawned the child.

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
    int StderrFd = 2);

/// <summary>The user the child runs as (--user/--group), switched to by the exec shim.</summary>
internal sealed record ChildUser(string Name, uint Uid, uint Gid);

internal sealed class SpawnException(int errno, string message) : Exception(message)
{
    public int Errno { get; } = errno;
}

internal static unsafe class Spawner
{
    public const string ShimVerb = "__gsupervisor-exec";

    /// <summary>
    /// The argv that runs this binary's exec shim. The program itself is run as /proc/self/exe, which names
    /// the running binary even after a package upgrade replaced or removed the file on disk.
    /// </summary>
    public static IReadOnlyList<string> ShimCommand { get; } = FindShimCommand();

    private const string SelfExecutable = "/proc/self/exe";

    private static string[] FindShimCommand()
    {
        var exe = System.Environment.ProcessPath ?? throw new InvalidOperationException("cannot tell the path of this program");
        // Run as `dotnet gsupervisor.dll` (framework-dependent, e.g. from tests): the shim needs the dll too.
        if (Path.GetFileName(exe) == "dotnet")
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "gsupervisor.dll");
            return [exe, dll, ShimVerb];
        }
        return [exe, ShimVerb];
    }

    /// <summary>Spawns the child and returns its pid; throws <see cref="SpawnException"/> with errno on failure.</summary>
    public static int Spawn(SpawnRequest request)
    {
        var argv = new List<string>(ShimCommand)
        {
            request.DeathSignal.ToString(System.Globalization.CultureInfo.InvariantCulture),
            System.Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture),
            request.ListenerFds.Count.ToString(System.Globalization.CultureInfo.InvariantCulture),
            request.User is { } user ? $"{user.Name}:{user.Uid}:{user.Gid}" : "-",
            request.CommandPath,
        };
        argv.AddRange(request.Argv);

        using var nativeArgv = new NativeStringArray(argv);
        using var nativeEnv = new NativeStringArray(request.Environment);
        var path = Encoding.UTF8.GetBytes(SelfExecutable + "\0");

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
                    if (source < 3 + request.ListenerFds.Count)
                        throw new InvalidOperationException($"listener fd {source} lies in the child's target range");
                    Check(Libc.posix_spawn_file_actions_adddup2(actions, source, 3 + i), "adddup2");
                }
                Check(Libc.posix_spawn_file_actions_addclosefrom_np(actions, 3 + request.ListenerFds.Count), "addclosefrom_np");

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
                        throw new SpawnException(rc, $"posix_spawn {ShimCommand[0]}: {ErrorNumbers.Describe(rc)}");
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

    private static void Check(int rc, string what)
    {
        if (rc != 0) throw new SpawnException(rc, $"{what}: {ErrorNumbers.Describe(rc)}");
    }
}
