// Overview
// --------
// The daemon's signal handlers, installed as the first thing its Main does in run mode: before the pid file,
// the control socket or READY=1 can tell anyone the supervisor is up. Until the event loop takes them, the
// signals that arrive wait in a queue, so a SIGUSR2 sent by a deploy script the moment the pid file appears is
// a reload once the loop runs, never the default action (which ends the process, and with it, through the
// parent-death signal, every child).

using System.Runtime.InteropServices;
using GSupervisor.Core;

namespace GSupervisor.Daemon.Os;

internal sealed class SupervisorSignals : IDisposable
{
    private static readonly PosixSignal[] Handled =
        [(PosixSignal)Signals.SIGUSR2, PosixSignal.SIGHUP, PosixSignal.SIGTERM, PosixSignal.SIGQUIT, PosixSignal.SIGINT];

    private readonly List<PosixSignalRegistration> _registrations = [];
    private readonly Lock _lock = new();
    private readonly List<int> _early = [];
    private Action<int>? _deliver;

    private SupervisorSignals() { }

    public static SupervisorSignals Install()
    {
        var signals = new SupervisorSignals();
        foreach (var signal in Handled)
            signals._registrations.Add(PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true; // otherwise the runtime re-raises SIGTERM/SIGINT/SIGQUIT with the default action
                signals.Arrived(ToNumber(context.Signal));
            }));
        return signals;
    }

    /// <summary>From now on, every signal goes to <paramref name="deliver"/>; those that came before go first, in order.</summary>
    public void DeliverTo(Action<int> deliver)
    {
        int[] early;
        lock (_lock)
        {
            _deliver = deliver;
            early = [.. _early];
            _early.Clear();
        }
        foreach (var signal in early) deliver(signal);
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

    private static int ToNumber(PosixSignal signal) => signal switch
    {
        PosixSignal.SIGHUP => Signals.SIGHUP,
        PosixSignal.SIGTERM => Signals.SIGTERM,
        PosixSignal.SIGQUIT => Signals.SIGQUIT,
        PosixSignal.SIGINT => Signals.SIGINT,
        _ => (int)signal, // raw numbers (SIGUSR2) come through as they are
    };

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
    }
}
