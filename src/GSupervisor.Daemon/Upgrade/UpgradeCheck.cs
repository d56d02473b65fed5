// Overview
// --------
// Before an in-place upgrade commits, the new binary is run once, as
//
//   NEW_BINARY --upgrade-check ARGS...     (ARGS: the running supervisor's own command line)
//
// with the state document on its stdin, as einhorn's --upgrade-check and overseer's token do. That run proves
// it executes here (the file is there, executable, for this machine, its libraries load, its exec helper is
// beside it), that it is a gsupervisor, that it accepts this command line, and that it can read this state; it
// binds nothing, starts nothing, and prints one line: "gsupervisor-upgrade-check: ok version=V format=F".
// Anything else (it cannot be run, exits non-zero, says something else, or takes longer than Timeout) refuses
// the upgrade with what it said, and the running image goes on as if nothing happened. A gsupervisor older than
// in-place upgrades stops at the unknown option (exit 64) before it binds anything.
//
// The check process is one of the supervisor's children, reaped by the reaper like any other; the loop matches
// its exit to the check by pid.

using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using GSupervisor.Core;
using GSupervisor.Daemon.Os;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Upgrade;

internal sealed partial class UpgradeCheck
{
    public const string Flag = "--upgrade-check";
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private const int MaxOutputBytes = 16 * 1024;

    private UpgradeCheck(int pid) => Pid = pid;

    public int Pid { get; }
    public ExitStatus? Exit { get; set; }
    public string? Output { get; set; }
    public bool TimedOut { get; set; }
    public bool Complete => Exit is not null && Output is not null;

    /// <summary>Starts the check; <paramref name="onOutput"/> is called (on another thread) with all it wrote.</summary>
    /// <exception cref="SpawnException">It could not be started at all.</exception>
    public static unsafe UpgradeCheck Start(string executable, IReadOnlyList<string> arguments, byte[] state, Action<int, string, bool> onOutput)
    {
        var input = Pipe();
        var output = Pipe();
        int pid;
        var actions = stackalloc byte[Libc.FileActionsBytes];
        var attr = stackalloc byte[Libc.SpawnAttrBytes];
        var allSignals = stackalloc byte[Libc.SigsetBytes];
        var noSignals = stackalloc byte[Libc.SigsetBytes];
        Libc.posix_spawn_file_actions_init(actions);
        Libc.posix_spawnattr_init(attr);
        try
        {
            Libc.posix_spawn_file_actions_adddup2(actions, input.Read, 0);
            Libc.posix_spawn_file_actions_adddup2(actions, output.Write, 1);
            Libc.posix_spawn_file_actions_adddup2(actions, output.Write, 2);
            Libc.posix_spawn_file_actions_addclosefrom_np(actions, 3);
            Libc.sigfillset(allSignals);
            Libc.sigemptyset(noSignals);
            Libc.posix_spawnattr_setsigdefault(attr, allSignals);
            Libc.posix_spawnattr_setsigmask(attr, noSignals);
            Libc.posix_spawnattr_setpgroup(attr, 0); // its own group: a signal to a generation's group never reaches it
            Libc.posix_spawnattr_setflags(attr, Libc.POSIX_SPAWN_SETSIGDEF | Libc.POSIX_SPAWN_SETSIGMASK | Libc.POSIX_SPAWN_SETPGROUP);
            using var argv = new NativeStringArray([executable, Flag, .. arguments]);
            using var environment = new NativeStringArray(ExecImage.SupervisorEnvironment().ToList());
            var path = Encoding.UTF8.GetBytes(executable + "\0");
            fixed (byte* p = path)
            {
                var rc = Libc.posix_spawn(out pid, p, actions, attr, argv.Pointer, environment.Pointer);
                if (rc != 0)
                {
                    foreach (var fd in new[] { input.Read, input.Write, output.Read, output.Write }) Syscall.close(fd);
                    throw new SpawnException(rc, $"cannot run {executable}: {ErrorNumbers.Describe(rc)}");
                }
            }
        }
        finally
        {
            Libc.posix_spawnattr_destroy(attr);
            Libc.posix_spawn_file_actions_destroy(actions);
        }
        Syscall.close(input.Read);
        Syscall.close(output.Write);
        new Thread(() =>
        {
            Fd.WriteAll(input.Write, state); // a binary that does not read it gets EPIPE here, which is fine
            Syscall.close(input.Write);
        }) { IsBackground = true, Name = "upgrade-check-in" }.Start();
        new Thread(() =>
        {
            var (text, timedOut) = ReadAll(output.Read);
            Syscall.close(output.Read);
            onOutput(pid, text, timedOut);
        }) { IsBackground = true, Name = "upgrade-check-out" }.Start();
        return new UpgradeCheck(pid);
    }

    /// <summary>Everything written until end of file, or until the timeout.</summary>
    private static unsafe (string Text, bool TimedOut) ReadAll(int fd)
    {
        var buffer = new byte[MaxOutputBytes];
        var filled = 0;
        var deadline = Environment.TickCount64 + (long)Timeout.TotalMilliseconds;
        var fds = new[] { new Pollfd { fd = fd, events = PollEvents.POLLIN } };
        var scratch = stackalloc byte[4096];
        while (true)
        {
            var left = deadline - Environment.TickCount64;
            if (left <= 0) return (Encoding.UTF8.GetString(buffer, 0, filled), true);
            if (Syscall.poll(fds, 1, (int)left) <= 0) continue; // EINTR, or the time is up (checked above)
            var n = Libc.read(fd, scratch, 4096);
            if (n <= 0) return (Encoding.UTF8.GetString(buffer, 0, filled), false);
            var keep = Math.Min(n, buffer.Length - filled);
            new ReadOnlySpan<byte>(scratch, keep).CopyTo(buffer.AsSpan(filled));
            filled += keep;
        }
    }

    private static (int Read, int Write) Pipe()
    {
        var fds = new int[2];
        if (Libc.pipe2(fds, Libc.O_CLOEXEC) != 0)
            throw new SpawnException(ErrorNumbers.Last, $"cannot create a pipe: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        return (fds[0], fds[1]);
    }

    [GeneratedRegex(@"^gsupervisor-upgrade-check: ok version=(\S+) format=(\d+)$", RegexOptions.Multiline)]
    private static partial Regex OkLine();

    /// <summary>The new version when the check passed; otherwise null and why not.</summary>
    public string? Verdict(string executable, out string? refusal)
    {
        var said = Output?.Trim() is { Length: > 0 } text ? $": {Shorten(text)}" : " and wrote nothing";
        refusal = null;
        if (TimedOut)
            refusal = $"{executable} did not finish its upgrade check within {Duration.Format(Timeout)}";
        else if (Exit is { Success: false } exit)
            refusal = exit.Code == ExitCodes.Usage && Output?.Contains(Flag, StringComparison.Ordinal) == true
                ? $"{executable} does not know {Flag}: it is a gsupervisor older than in-place upgrades, or not a gsupervisor (it said{said})"
                : $"{executable} failed its upgrade check with {exit}{said}";
        else if (OkLine().Match(Output ?? "") is { Success: true } ok)
            return ok.Groups[1].Value;
        else
            refusal = $"{executable} is not a gsupervisor that can take over: its upgrade check exited 0{said}";
        return null;
    }

    private static string Shorten(string text)
    {
        var oneLine = string.Join(" | ", text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        return oneLine.Length <= 400 ? oneLine : oneLine[..400] + "...";
    }

    /// <summary>
    /// The check itself, in the new binary: <paramref name="arguments"/> must make a valid run, and stdin must hold
    /// a state this version reads. Binds and starts nothing.
    /// </summary>
    public static int Run(string[] arguments, TextWriter stdout)
    {
        var read = CommandLineReader.Read(arguments);
        if (read.Settings is not { } settings)
        {
            stdout.WriteLine($"gsupervisor-upgrade-check: gsupervisor {CommandLineReader.Version} does not accept the running supervisor's command line: {read.Output}");
            return ExitCodes.Usage;
        }
        try
        {
            Spawner.Open(reservedBelow: 3).Dispose(); // the exec helper every child starts in, beside this binary
            using var input = new MemoryStream();
            using (var stdin = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(0, ownsHandle: false), FileAccess.Read))
                stdin.CopyTo(input);
            HandedOver.Check(UpgradeState.FromJson(input.ToArray()), settings.Policy);
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"gsupervisor-upgrade-check: ok version={CommandLineReader.Version} format={UpgradeState.CurrentFormat}"));
            return ExitCodes.Ok;
        }
        catch (StartupException e)
        {
            stdout.WriteLine($"gsupervisor-upgrade-check: gsupervisor {CommandLineReader.Version} is not installed completely: {e.Message}");
            return e.ExitCode;
        }
        catch (Exception e) when (e is UpgradeStateException or IOException)
        {
            stdout.WriteLine($"gsupervisor-upgrade-check: gsupervisor {CommandLineReader.Version} cannot take over this state: {e.Message}");
            return ExitCodes.Software;
        }
    }
}
