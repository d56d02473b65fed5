// Overview
// --------
// How the daemon hears SIGUSR2, SIGHUP, SIGTERM, SIGQUIT and SIGINT. The first thing its Main does in run mode
// is to block them in every thread: the main thread, and (by running a finalizer there) the runtime's
// finalizer thread, the only other thread that exists before Main; every later thread inherits the mask from
// its creator. So a signal is never delivered to a handler: it stays pending in the kernel until the "signals"
// thread reads it from a signalfd, which it does only once the event loop takes signals, and only through
// the intake gate (Os/IntakeGate.cs). What this buys:
//   * a SIGUSR2 sent by a deploy script the moment the pid file appears is a reload once the loop runs, never
//     the default action (which ends the process and, through the parent-death signal, every child);
//   * across the exec of an in-place upgrade nothing is lost: execve keeps the calling thread's mask and the
//     pending set, so what arrives while the old image hands over waits, blocked, for the new image's signalfd.
// Should some thread not block them after all (checked at start, see AllThreadsBlock), the runtime's handlers
// stay installed as well (PosixSignalRegistration), so that thread turns a signal into the same event instead
// of dying of it.

using System.Runtime.InteropServices;
using GSupervisor.Core;

namespace GSupervisor.Daemon.Os;

internal sealed unsafe partial class SupervisorSignals : IDisposable
{
    private static readonly int[] Handled = [Signals.SIGUSR2, Signals.SIGHUP, Signals.SIGTERM, Signals.SIGQUIT, Signals.SIGINT];
    private const int SIG_BLOCK = 0;
    private const int SFD_CLOEXEC = 0x80000, SFD_NONBLOCK = 0x800;
    private const int SignalfdSiginfoBytes = 128;

    private readonly List<PosixSignalRegistration> _registrations = [];
    private readonly Lock _lock = new();
    private readonly List<int> _early = [];
    private readonly int _signalfd;
    private Action<int>? _deliver;

    private SupervisorSignals(int signalfd) => _signalfd = signalfd;

    /// <summary>Whether every thread of this process had the handled signals blocked when it was checked at start.</summary>
    public bool AllThreadsBlock { get; private set; }

    public static SupervisorSignals Install()
    {
        var set = stackalloc byte[Libc.SigsetBytes];
        BlockOnThisThread(set);
        BlockOnFinalizerThread();
        var fd = signalfd(-1, set, SFD_CLOEXEC | SFD_NONBLOCK);
        var signals = new SupervisorSignals(fd);
        foreach (var signal in Handled)
            signals._registrations.Add(PosixSignalRegistration.Create((PosixSignal)ToPosixSignal(signal), context =>
            {
                context.Cancel = true; // otherwise the runtime re-raises SIGTERM/SIGINT/SIGQUIT with the default action
                signals.Arrived(signal);
            }));
        signals.AllThreadsBlock = fd >= 0 && EveryThreadBlocks(Handled);
        return signals;
    }

    /// <summary>
    /// From now on every signal goes to <paramref name="deliver"/>, read from the signalfd through
    /// <paramref name="gate"/>; any that reached a handler before (see the overview) go first.
    /// </summary>
    public void DeliverTo(Action<int> deliver, IntakeGate gate)
    {
        int[] early;
        lock (_lock)
        {
            _deliver = deliver;
            early = [.. _early];
            _early.Clear();
        }
        foreach (var signal in early) deliver(signal);
        if (_signalfd >= 0) new Thread(() => ReadLoop(gate)) { IsBackground = true, Name = "signals" }.Start();
    }

    private void ReadLoop(IntakeGate gate)
    {
        var buffer = stackalloc byte[SignalfdSiginfoBytes * 8];
        while (true)
        {
            Fd.WaitReadable(_signalfd);
            using (gate.Enter())
            {
                var n = Libc.read(_signalfd, buffer, SignalfdSiginfoBytes * 8);
                for (var at = 0; at + SignalfdSiginfoBytes <= n; at += SignalfdSiginfoBytes)
                    Arrived((int)*(uint*)(buffer + at)); // ssi_signo comes first
            }
        }
    }

    private void Arrived(int signal)
    {
        Action<int>? deliver;
        lock (_lock)
        {
            deliver = _deliver;
            if (deliver is null) _early.Add(signal);
        }
        deliver?.Invoke(signal);
    }

    /// <summary>Runs a finalizer, which the runtime runs on its finalizer thread, that blocks the signals there.</summary>
    private static void BlockOnFinalizerThread()
    {
        MakeGarbage();
        GC.Collect();
        GC.WaitForPendingFinalizers();
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static void MakeGarbage() => _ = new BlockSignalsWhenFinalized();

    private sealed class BlockSignalsWhenFinalized
    {
        ~BlockSignalsWhenFinalized()
        {
            var set = stackalloc byte[Libc.SigsetBytes];
            BlockOnThisThread(set);
        }
    }

    /// <summary>Fills <paramref name="set"/> with the handled signals and blocks them on the calling thread.</summary>
    private static void BlockOnThisThread(byte* set)
    {
        Libc.sigemptyset(set);
        foreach (var signal in Handled) Libc.sigaddset(set, signal);
        Libc.pthread_sigmask(SIG_BLOCK, set, null);
    }

    /// <summary>Reads every thread's SigBlk from /proc/self/task.</summary>
    private static bool EveryThreadBlocks(int[] signals)
    {
        ulong wanted = 0;
        foreach (var s in signals) wanted |= 1UL << (s - 1);
        try
        {
            foreach (var task in Directory.GetDirectories("/proc/self/task"))
            {
                var line = File.ReadLines(Path.Combine(task, "status")).FirstOrDefault(l => l.StartsWith("SigBlk:", StringComparison.Ordinal));
                if (line is null || (Convert.ToUInt64(line[7..].Trim(), 16) & wanted) != wanted) return false;
            }
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static int ToPosixSignal(int signal) => signal switch
    {
        Signals.SIGHUP => (int)PosixSignal.SIGHUP,
        Signals.SIGTERM => (int)PosixSignal.SIGTERM,
        Signals.SIGQUIT => (int)PosixSignal.SIGQUIT,
        Signals.SIGINT => (int)PosixSignal.SIGINT,
        _ => signal, // raw numbers (SIGUSR2) go through as they are
    };

    [LibraryImport("libc", EntryPoint = "signalfd", SetLastError = true)]
    private static partial int signalfd(int fd, void* mask, int flags);

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
    }
}
