// Overview
// --------
// The one owner of reaping. A dedicated thread blocks in waitid(P_ALL, WEXITED | WNOWAIT): it learns that a
// child ended *without* reaping it, reports the exit, and waits until the event loop has acted on it and
// called Reap. Until then the child stays a zombie, so its pid (and process-group id) cannot be reused
// while the loop might still signal it. Generations and, as PID 1 or subreaper, orphans go the same way.
//
// Nothing else in the supervisor waits for children: System.Diagnostics.Process is never used (the runtime
// reaps its children itself), and the runtime's own SIGCHLD handler is never installed (no Process, no
// PosixSignalRegistration for SIGCHLD, no console initialisation), so as PID 1 the runtime does not reap
// ours from under us. With no children, waitid fails with ECHILD; the thread then sleeps until the spawner
// says one started.

using System.Runtime.InteropServices;
using GSupervisor.Core;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal sealed unsafe partial class Reaper(Action<int, ExitStatus> onExit, Action<string> onError)
{
    private const int P_ALL = 0;
    private const int WEXITED = 4;
    private const int WNOWAIT = 0x01000000;
    private const int CLD_EXITED = 1, CLD_DUMPED = 3;

    private readonly SemaphoreSlim _childStarted = new(0);
    private readonly SemaphoreSlim _reaped = new(0);

    [LibraryImport("libc", EntryPoint = "waitid", SetLastError = true)]
    private static partial int waitid(int idType, int id, byte* info, int options);

    public void Start() => new Thread(Loop) { IsBackground = true, Name = "reaper" }.Start();

    /// <summary>Call after each successful spawn.</summary>
    public void ChildStarted() => _childStarted.Release();

    /// <summary>Reaps <paramref name="pid"/> once the loop has handled its exit; the reaper then looks for the next.</summary>
    public void Reap(int pid)
    {
        while (Syscall.waitpid(pid, out _, WaitOptions.WNOHANG) < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR)
        {
        }
        _reaped.Release();
    }

    private void Loop()
    {
        // siginfo_t is 128 bytes; for SIGCHLD: si_code at 8, si_pid at 16, si_status at 24 (Linux, 64-bit).
        var info = stackalloc byte[128];
        while (true)
        {
            new Span<byte>(info, 128).Clear();
            if (waitid(P_ALL, 0, info, WEXITED | WNOWAIT) == 0)
            {
                var code = *(int*)(info + 8);
                var pid = *(int*)(info + 16);
                var status = *(int*)(info + 24);
                onExit(pid, code == CLD_EXITED ? ExitStatus.Exited(status) : ExitStatus.Killed(status, code == CLD_DUMPED));
                _reaped.Wait();
                continue;
            }
            var errno = ErrorNumbers.Last;
            if (errno == ErrorNumbers.EINTR) continue;
            if (errno != ErrorNumbers.ECHILD) onError($"waitid failed: {ErrorNumbers.Describe(errno)}");
            _childStarted.Wait();
        }
    }
}
