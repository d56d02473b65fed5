// Overview
// --------
// The one owner of reaping. A dedicated thread blocks in waitpid(-1) and reports every child that ends,
// generations and (as PID 1 or subreaper) orphans alike. Nothing else in the supervisor may wait for
// children: System.Diagnostics.Process is never used (the runtime reaps its children itself), and the
// runtime's own SIGCHLD handler is never installed (no Process, no PosixSignalRegistration for SIGCHLD,
// no console initialisation), so as PID 1 the runtime does not reap ours from under us.
// With no children, waitpid fails with ECHILD; the thread then sleeps until the spawner says one started.

using GSupervisor.Core;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal sealed class Reaper(Action<int, ExitStatus> onExit, Action<string> onError)
{
    private readonly SemaphoreSlim _childStarted = new(0);

    public void Start() => new Thread(Loop) { IsBackground = true, Name = "reaper" }.Start();

    /// <summary>Call after each successful spawn.</summary>
    public void ChildStarted() => _childStarted.Release();

    private void Loop()
    {
        while (true)
        {
            var pid = Syscall.waitpid(-1, out var status, 0);
            if (pid > 0)
            {
                onExit(pid, Decode(status));
                continue;
            }
            var errno = ErrorNumbers.Last;
            if (errno == ErrorNumbers.EINTR) continue;
            if (errno != ErrorNumbers.ECHILD) onError($"waitpid failed: {ErrorNumbers.Describe(errno)}");
            _childStarted.Wait();
        }
    }

    public static ExitStatus Decode(int status)
    {
        var signal = status & 0x7f;
        return signal == 0
            ? ExitStatus.Exited((status >> 8) & 0xff)
            : ExitStatus.Killed(signal, (status & 0x80) != 0);
    }
}
