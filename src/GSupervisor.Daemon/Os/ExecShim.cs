// Overview
// --------
// The exec shim: the first moments of every child. The supervisor spawns its own binary as
//   gsupervisor __gsupervisor-exec DEATHSIG SUPERVISOR_PID NFDS USER PATH ARGV0 ARGS...
// and this code, in the child's process, (0) switches to USER (name:uid:gid, or "-") with its groups,
// (1) arms PR_SET_PDEATHSIG (after the switch, which would clear it) so the child gets DEATHSIG if the
// supervisor dies, (2) sets LISTEN_PID to its own pid, which is the pid the command will have, (3) undoes
// what the .NET runtime did to the process (SIGPIPE ignored, fds opened without CLOEXEC), and (4) execs the
// command. It runs no supervisor logic and writes one line to stderr if the exec fails (exit 126 or 127).

using System.Globalization;
using System.Text;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal static unsafe class ExecShim
{
    public static int Run(string[] args)
    {
        if (args.Length < 7)
        {
            Console.Error.WriteLine("gsupervisor: the exec shim is internal; run gsupervisor --help");
            return 64;
        }
        var deathSignal = int.Parse(args[1], CultureInfo.InvariantCulture);
        var supervisorPid = int.Parse(args[2], CultureInfo.InvariantCulture);
        var listenerCount = int.Parse(args[3], CultureInfo.InvariantCulture);
        var user = args[4];
        var path = args[5];
        var argv = args[6..];

        if (user != "-" && SwitchUser(user) is { } failure)
        {
            Console.Error.WriteLine($"gsupervisor: cannot run the child as {user.Split(':')[0]}: {failure}");
            return 126;
        }
        Libc.prctl(Libc.PR_SET_PDEATHSIG, (nuint)deathSignal, 0, 0, 0);
        if (Syscall.getppid() != supervisorPid)
        {
            Console.Error.WriteLine("gsupervisor: the supervisor exited before its child could start");
            return 128 + deathSignal;
        }

        var environment = new List<string>();
        // As systemd does for User=: HOME, USER and LOGNAME are those of the user the child runs as.
        var account = user != "-" ? Syscall.getpwuid(Syscall.getuid()) : null;
        string[] replaced = account is null ? ["LISTEN_PID"] : ["LISTEN_PID", "HOME", "USER", "LOGNAME"];
        foreach (System.Collections.DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            var key = (string)entry.Key;
            if (!replaced.Contains(key)) environment.Add(key + "=" + entry.Value);
        }
        if (account is not null)
            environment.AddRange([$"HOME={account.pw_dir}", $"USER={account.pw_name}", $"LOGNAME={account.pw_name}"]);
        if (listenerCount > 0)
            environment.Add("LISTEN_PID=" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture));

        using var nativeArgv = new NativeStringArray(argv);
        using var nativeEnv = new NativeStringArray(environment);
        var pathBytes = Encoding.UTF8.GetBytes(path + "\0");

        // Everything is allocated; from here on only plain calls until execve.
        ResetIgnoredSignals();
        var empty = stackalloc byte[Libc.SigsetBytes];
        Libc.sigemptyset(empty);
        Libc.sigprocmask(Libc.SIG_SETMASK, empty, null);
        MarkCloseOnExecFrom(3 + listenerCount);

        fixed (byte* p = pathBytes)
            Libc.execve(p, nativeArgv.Pointer, nativeEnv.Pointer);
        var errno = Libc.LastErrno;
        Console.Error.WriteLine($"gsupervisor: cannot execute {path}: {ErrorNumbers.Describe(errno)}");
        return errno == ErrorNumbers.ENOENT ? 127 : 126;
    }

    /// <summary>initgroups, setgid, setuid; null on success, else the reason.</summary>
    private static string? SwitchUser(string spec)
    {
        var parts = spec.Split(':');
        var name = parts[0];
        var uid = uint.Parse(parts[1], CultureInfo.InvariantCulture);
        var gid = uint.Parse(parts[2], CultureInfo.InvariantCulture);
        if (Libc.initgroups(name, gid) != 0) return "initgroups: " + ErrorNumbers.Describe(Libc.LastErrno);
        if (Syscall.setgid(gid) != 0) return "setgid: " + ErrorNumbers.Describe(ErrorNumbers.Last);
        if (Syscall.setuid(uid) != 0) return "setuid: " + ErrorNumbers.Describe(ErrorNumbers.Last);
        return null;
    }

    /// <summary>
    /// execve keeps ignored dispositions (the runtime ignores SIGPIPE) and resets handled ones, so only the
    /// ignored ones need resetting. The runtime's own handlers stay in place until the exec replaces them.
    /// </summary>
    private static void ResetIgnoredSignals()
    {
        const nint SIG_IGN = 1;
        const nint SIG_DFL = 0;
        var action = stackalloc byte[Libc.SigactionBytes];
        for (var signal = 1; signal <= 64; signal++)
        {
            if (signal is 9 or 19) continue;
            if (signal is 32 or 33)
            {
                // glibc's own signals: its wrappers refuse them, and the runtime leaves 32 ignored.
                Libc.ResetSignalRaw(signal);
                continue;
            }
            if (Libc.sigaction(signal, null, action) != 0) continue;
            if (*(nint*)action == SIG_IGN) Libc.signal(signal, SIG_DFL);
        }
    }

    private static void MarkCloseOnExecFrom(int first)
    {
        if (Libc.close_range((uint)first, uint.MaxValue, Libc.CLOSE_RANGE_CLOEXEC) == 0) return;
        // Kernels before 5.11: set FD_CLOEXEC one by one.
        foreach (var entry in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            if (int.TryParse(Path.GetFileName(entry), out var fd) && fd >= first)
                Libc.fcntl(fd, Libc.F_SETFD, Libc.FD_CLOEXEC);
        }
    }

    internal static bool IsShimInvocation(string[] args) => args.Length > 0 && args[0] == Spawner.ShimVerb;
}
