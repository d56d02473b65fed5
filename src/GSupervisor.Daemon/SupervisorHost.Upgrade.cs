// Overview
// --------
// The in-place upgrade, on the event loop: `gsupervisor upgrade` re-executes the binary now at the supervisor's
// executable path in this same process, so the pid, systemd's MainPID, the cgroup and the children's parentage
// stay, and the children are never signalled. In steps:
//
//   1. requested: while a reload is starting it waits for it to finish (success or rollback); while the
//      supervisor shuts down it is refused.
//   2. checked: the new binary runs once with --upgrade-check (Upgrade/UpgradeCheck.cs). From here on, signals
//      and control requests that change what runs (reload, stop) wait: they are handled after the upgrade, by
//      whichever image runs then. Status requests are answered; children's exits, messages and output are
//      handled as always.
//   3. handed over: the intake gate closes (Os/IntakeGate.cs), so nothing more is taken out of the kernel;
//      what was taken is handled; LoopState becomes the UpgradeState document; exec (Upgrade/ExecImage.cs).
//   4. resumed, in the new image (ResumeAfterUpgrade): the waiting signals and requests are handled first, the
//      `upgrade --wait` callers are answered, systemd hears READY=1.
// A check that fails, a hand-over that cannot close the gate, or an exec that fails refuses the upgrade with
// the reason; the running image goes on, and then handles what waited.

using System.Diagnostics;
using GSupervisor.Core;
using GSupervisor.Daemon.Os;
using GSupervisor.Daemon.Upgrade;
using Mono.Unix.Native;

namespace GSupervisor.Daemon;

internal sealed partial class SupervisorHost
{
    /// <summary>How long the hand-over may wait for the threads that take input to finish what they are taking.</summary>
    private static readonly TimeSpan GateCloseTimeout = TimeSpan.FromSeconds(5);

    private sealed class UpgradeAttempt(TimeSpan requestedAt)
    {
        public TimeSpan RequestedAt { get; } = requestedAt;
        public bool SaidWaiting { get; set; }
        /// <summary>Set once the check runs: from then on, signals and reload/stop requests wait.</summary>
        public UpgradeCheck? Check { get; set; }
        /// <summary>Ends a check that closed its output but does not exit.</summary>
        public Timer? ExitDeadline { get; set; }
        /// <summary>Set once the check passed: the hand-over (step 3) runs, and nothing else moves the upgrade on.</summary>
        public bool HandingOver { get; set; }
    }

    private UpgradeAttempt? _upgrade;

    /// <summary>While an upgrade is checked or handed over, signals and requests that change what runs wait for it.</summary>
    private bool Defers(LoopEvent e) => _upgrade?.Check is not null && e switch
    {
        LoopEvent.Signal => true,
        LoopEvent.Control c => ChangesWhatRuns(c.Request),
        _ => false,
    };

    private int? OnUpgradeRequested(ControlRequest request, bool wait)
    {
        if (_machine.Phase == SupervisorPhase.ShuttingDown)
        {
            request.Reply("FAILED upgrade refused: the supervisor is shutting down");
            return null;
        }
        if (wait) _state.UpgradeWaiters.Add(request);
        else request.Reply($"OK upgrade started: {_parts.Executable} is checked, then takes over in place (see gsupervisor status)");
        if (_upgrade is not null)
        {
            _log.Information("upgrade requested again; one is already under way");
            return null;
        }
        _upgrade = new UpgradeAttempt(_machine.Now);
        _log.Information("upgrade requested: {Executable} is to take over in place (pid {Pid} stays, the children are not touched)", _parts.Executable, Environment.ProcessId);
        return AdvanceUpgrade();
    }

    /// <summary>Moves an upgrade on as far as it can go now; called after every turn of the loop.</summary>
    private int? AdvanceUpgrade()
    {
        if (_upgrade is not { HandingOver: false } upgrade) return null;
        if (_machine.Phase is SupervisorPhase.ShuttingDown or SupervisorPhase.Exited && upgrade.Check is null)
            return RefuseUpgrade("the supervisor is shutting down");
        if (upgrade.Check is null)
        {
            if (_machine.Starting is { Cause: GenerationCause.Reload } starting)
            {
                if (!upgrade.SaidWaiting)
                    _log.Information("the upgrade waits for the reload under way ({Generation}) to finish", starting.Label);
                upgrade.SaidWaiting = true;
                return null;
            }
            try
            {
                upgrade.Check = UpgradeCheck.Start(_parts.Executable, _parts.Arguments, BuildState(upgrade).ToJson(),
                    (pid, output, timedOut) => Post(new LoopEvent.UpgradeCheckOutput(pid, output, timedOut)));
                _reaper.ChildStarted();
                _log.Debug("upgrade check of {Executable} started (pid {Pid})", _parts.Executable, upgrade.Check.Pid);
            }
            catch (SpawnException e)
            {
                return RefuseUpgrade(e.Message);
            }
            return null;
        }
        if (!upgrade.Check.Complete) return null;
        upgrade.ExitDeadline?.Dispose();
        var version = upgrade.Check.Verdict(_parts.Executable, out var refusal);
        return version is null ? RefuseUpgrade(refusal!) : HandOver(upgrade, version);
    }

    private int? OnUpgradeCheckExited(UpgradeCheck check, ExitStatus status)
    {
        check.Exit = status;
        return AdvanceUpgrade();
    }

    private int? OnUpgradeCheckOutput(LoopEvent.UpgradeCheckOutput o)
    {
        if (_upgrade?.Check is not { } check || check.Pid != o.Pid || check.Complete) return null;
        check.Output = o.Output;
        check.TimedOut |= o.TimedOut;
        if (!o.TimedOut && check.Exit is null)
            _upgrade.ExitDeadline = new Timer(_ => Post(o with { TimedOut = true }), null, TimeSpan.FromSeconds(5), Timeout.InfiniteTimeSpan);
        if (o.TimedOut && Syscall.kill(o.Pid, Signum.SIGKILL) != 0 && ErrorNumbers.Last != ErrorNumbers.ESRCH)
            _log.Warning("cannot kill the upgrade check (pid {Pid}): {Error}", o.Pid, ErrorNumbers.Describe(ErrorNumbers.Last));
        return AdvanceUpgrade();
    }

    /// <summary>The running image goes on: the waiters hear why, and what waited is handled now.</summary>
    private int? RefuseUpgrade(string reason)
    {
        _log.Error("upgrade refused: {Reason}; gsupervisor {Version} goes on serving", reason, CommandLineReader.Version);
        _state.LastUpgrade = new UpgradeOutcome(false, reason, _machine.Now, null);
        foreach (var waiter in _state.UpgradeWaiters) waiter.Reply($"FAILED upgrade refused: {reason}");
        _state.UpgradeWaiters.Clear();
        _upgrade?.ExitDeadline?.Dispose();
        _upgrade = null;
        // Only a running service was told RELOADING=1; one still starting says READY=1 when its first generation is,
        // and a reload whose new generation is on probation when its probation ends.
        if (_machine.Phase == SupervisorPhase.Running && _machine.OnProbation is null) _systemd?.Send("READY=1\nSTATUS=" + StatusLine());
        return HandleDeferred();
    }

    private int? HandleDeferred()
    {
        int? exit = null;
        var deferred = _state.Deferred.ToList();
        _state.Deferred.Clear();
        foreach (var e in deferred) exit ??= HandleSafely(e);
        return exit;
    }

    /// <summary>Step 3 of the overview: close the gate, handle what was taken, exec. Returns only if the upgrade did not happen.</summary>
    private int? HandOver(UpgradeAttempt upgrade, string newVersion)
    {
        upgrade.HandingOver = true;
        _log.Information("upgrade check passed: {Executable} is gsupervisor {Version}; handing over", _parts.Executable, newVersion);
        _systemd?.Send($"RELOADING=1\nMONOTONIC_USEC={SystemdNotifier.MonotonicMicroseconds()}\nSTATUS=upgrading in place to gsupervisor {newVersion}");
        var closing = Stopwatch.StartNew();
        int? exit = null;
        // A producer may be waiting for a place at the untrusted gate, which only handling its events frees.
        while (!_parts.Gate.TryClose(TimeSpan.FromMilliseconds(10)))
        {
            exit ??= HandleQueued();
            if (exit is not null || !ReferenceEquals(_upgrade, upgrade)) return exit;
            if (closing.Elapsed > GateCloseTimeout)
                return RefuseUpgrade($"the threads that take input did not pause within {Duration.Format(GateCloseTimeout)} " +
                    "(an output relay blocked on a stdout nobody reads?)");
        }
        string reason;
        try
        {
            exit = HandleQueued();
            if (exit is not null || !ReferenceEquals(_upgrade, upgrade)) return exit;
            if (_machine.Phase is not (SupervisorPhase.Running or SupervisorPhase.Starting))
                return RefuseUpgrade("the supervisor began to shut down during the hand-over");
            var state = BuildState(upgrade);
            var json = state.ToJson();
            _log.Information("exec {Executable} (gsupervisor {New}) in place of gsupervisor {Old}, pid {Pid}, after {Took}",
                _parts.Executable, newVersion, CommandLineReader.Version, Environment.ProcessId, Duration.Format(_machine.Now - upgrade.RequestedAt));
            _parts.FlushLog(TimeSpan.FromSeconds(2));
            var errno = ExecImage.Exec(_parts.Executable, [_parts.Executable, .. _parts.Arguments], state.CrossingFds(), json);
            reason = $"exec {_parts.Executable} failed: {ErrorNumbers.Describe(errno)}";
        }
        catch (Exception e)
        {
            _log.Error(e, "internal error while handing over to the new image");
            reason = $"internal error while handing over: {e.Message}";
        }
        finally
        {
            // Still here: no exec. Whatever happened, the threads that take input go on.
            if (_parts.Gate.IsClosed) _parts.Gate.Reopen();
        }
        return RefuseUpgrade(reason);
    }

    /// <summary>Handles every event in the queue now; those that wait for the upgrade are put aside.</summary>
    private int? HandleQueued()
    {
        int? exit = null;
        while (_queue.TryTake(out var e)) exit ??= HandleSafely(e);
        return exit;
    }

    /// <summary>LoopState and the OS objects' fds as the document the new image starts from.</summary>
    private UpgradeState BuildState(UpgradeAttempt upgrade) => new()
    {
        WrittenBy = CommandLineReader.Version,
        RequestedAtUs = _machine.OriginMonotonicMicroseconds + (long)upgrade.RequestedAt.TotalMicroseconds,
        Upgrades = _state.Upgrades,
        CommandPath = CurrentCommandPath(),
        Command = [.. _state.Command],
        NextCommand = _state.NextCommand?.ToList(),
        Launches = _state.Launches.Select(pair => new LaunchState
        {
            Generation = pair.Key, Argv = [.. pair.Value.Argv], CommandPath = pair.Value.CommandPath,
            Directory = pair.Value.Directory, ChangesDirectory = pair.Value.ChangesDirectory,
        }).ToList(),
        Machine = _machine.Export(),
        Listeners = _listeners.Select(l => new ListenerState
        {
            Spec = l.Spec.Text, Name = l.Spec.Name, Fd = l.Fd, Address = l.Address, UnixPathToRemove = l.UnixPathToRemove, UnixInode = l.UnixInode,
        }).ToList(),
        RuntimeDirectory = _parts.RuntimeDirectory.Path,
        NotifyFd = _parts.Notify.SocketFd,
        HandoffFd = _parts.Handoff.SocketFd,
        ControlFd = _parts.Control.SocketFd,
        MetricsFd = _parts.Metrics?.Listener.Fd ?? -1,
        MetricsAddress = _parts.Metrics?.Listener.Address,
        HandoffConnections = _state.Connections.SelectMany(pair => pair.Value.Select(c => new ConnectionState
        {
            Generation = pair.Key, Fd = c.SocketFd, PeerPid = c.PeerPid, PeerUid = c.PeerUid, Pending = c.Pending,
        })).ToList(),
        Outputs = OutputsToCarry(),
        ReloadWaiters = _state.ReloadWaiters.Select(w => new WaiterState { Fd = w.Request.SocketFd, MinGeneration = w.MinGeneration }).ToList(),
        UpgradeWaiterFds = _state.UpgradeWaiters.Select(w => w.SocketFd).ToList(),
        Deferred = _state.Deferred.Select(e => e switch
        {
            LoopEvent.Signal s => new DeferredState { Signal = s.Number },
            LoopEvent.Control c => new DeferredState { ControlFd = c.Request.SocketFd, ControlLine = c.Request.Line },
            _ => throw new InvalidOperationException($"{e} cannot wait for an upgrade"),
        }).ToList(),
        Interrupts = _state.Interrupts,
        SaidNoDrain = _state.SaidNoDrain,
    };

    /// <summary>For an older image, which reads only the command's path: that of the serving generation, or as it resolves now.</summary>
    private string CurrentCommandPath()
    {
        if (_machine.Serving is { } serving && _state.Launches.TryGetValue(serving.Number, out var launch)) return launch.CommandPath;
        try
        {
            return _parts.Launcher.Plan(_state.Command).CommandPath;
        }
        catch (StartupException)
        {
            return _state.Command[0];
        }
    }

    /// <summary>Every pipe the relay still reads (of any generation, gone or not), and the kept tails of the newest generations.</summary>
    private List<OutputState> OutputsToCarry()
    {
        var pipes = _parts.Output.Pipes();
        var withoutPipes = _state.OutputTails.Values.Where(t => !pipes.Any(p => ReferenceEquals(p.Tail, t)));
        return pipes.Concat(withoutPipes.Select(t => (Tail: t, Stdout: -1, Stderr: -1)))
            .Select(p => new OutputState { Generation = p.Tail.Generation, StdoutFd = p.Stdout, StderrFd = p.Stderr, Tail = p.Tail.Bytes() })
            .ToList();
    }

    /// <summary>Step 4 of the overview, in the new image; or, should the new image have returned to this one, the refusal.</summary>
    private int? ResumeAfterUpgrade(UpgradeState carried)
    {
        if (ExecImage.FailedUpgrade is { } failure)
        {
            return RefuseUpgrade($"the new binary could not take over and returned to this one: {failure}") ?? Execute(_machine.Tick());
        }
        _state.Upgrades = carried.Upgrades + 1;
        var requestedAt = TimeSpan.FromMicroseconds(carried.RequestedAtUs - _machine.OriginMonotonicMicroseconds);
        var took = _machine.Now - requestedAt;
        var message = $"gsupervisor {carried.WrittenBy} -> {CommandLineReader.Version} in place, pid {Environment.ProcessId}, in {Duration.Format(took)}";
        _state.LastUpgrade = new UpgradeOutcome(true, message, _machine.Now, took);
        _log.Information("upgraded: {Message}; {Generations} carried over, upgrade {Count} of this supervisor", message,
            _machine.Generations.Count == 1 ? "1 generation" : $"{_machine.Generations.Count} generations", _state.Upgrades);
        foreach (var waiter in _state.UpgradeWaiters) waiter.Reply($"OK upgraded: {message}");
        _state.UpgradeWaiters.Clear();
        if (_machine.Phase is SupervisorPhase.Running && _machine.OnProbation is null) _systemd?.Send("READY=1\nSTATUS=" + StatusLine() + $"; upgraded to gsupervisor {CommandLineReader.Version}");
        return HandleDeferred() ?? Execute(_machine.Tick());
    }
}
