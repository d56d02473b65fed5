// Overview
// --------
// The generation state machine: the whole reload protocol as pure logic. It owns the list of generations
// (child processes) and decides, for every event (a reload request, a child's READY=1, a child's exit, a
// shutdown request) and for every deadline that comes due (Tick), what the OS edge must do: spawn, signal,
// log, exit. It makes no OS calls and reads time only from the TimeProvider it is given, so the protocol is
// unit-tested with a fake clock.
//
// Generations move Starting -> [Probation ->] Ready -> Draining -> Exited. Invariants:
//   * at most one generation is Starting or on Probation (the newcomer), and at most one is Ready (the serving
//     one);
//   * a serving generation is stopped only after its successor is Ready, which with --probation D means after
//     the successor has served beside it for D without exiting or reporting failure (WATCHDOG=trigger); only a
//     shutdown stops it sooner. A failed reload (the new child exits, misses its ready timeout, or fails its
//     probation) stops the new child and leaves the serving one alone: a rollback;
//   * reload requests that arrive while a generation is starting or on probation collapse into one that runs
//     after it;
//   * any number of generations may drain at once, each with its own stop deadline (then SIGKILL);
//   * a generation is its process group: the stop signal and SIGKILL go to the whole group, and a draining
//     generation whose leader exits drains on until its group is empty (KillMode=control-group).
// A serving child that dies is restarted with exponential backoff (the listeners stay open in the
// supervisor, so clients queue meanwhile); with Restart=false the supervisor exits with the child's status.

namespace GSupervisor.Core;

public sealed class SupervisorStateMachine
{
    private readonly SupervisorPolicy _policy;
    private readonly TimeProvider _time;
    private readonly long _origin;
    private readonly List<Generation> _generations = [];
    private int _lastNumber;
    private string? _pendingReload;
    private TimeSpan? _restartAt;
    private int _consecutiveFailures;
    private int _exitCode;
    private bool _killedAll;

    /// <summary>How long a group whose leader has exited is waited for after its SIGKILL (processes stuck in the kernel).</summary>
    private static readonly TimeSpan KillGrace = TimeSpan.FromSeconds(5);

    public SupervisorStateMachine(SupervisorPolicy policy, TimeProvider time)
        : this(policy, time, time.GetTimestamp())
    {
    }

    private SupervisorStateMachine(SupervisorPolicy policy, TimeProvider time, long origin)
    {
        _policy = policy;
        _time = time;
        _origin = origin;
    }

    /// <summary>When the machine was created, in microseconds of the TimeProvider's (monotonic) clock.</summary>
    public long OriginMonotonicMicroseconds => ToMicroseconds(_origin);

    /// <summary>The machine as data (see MachineSnapshot.cs), to be carried across an in-place upgrade.</summary>
    public MachineSnapshot Export() => new()
    {
        OriginMonotonicUs = OriginMonotonicMicroseconds,
        Phase = Phase.ToString(),
        LastNumber = _lastNumber,
        PendingReload = _pendingReload,
        RestartAtUs = Us(_restartAt),
        ConsecutiveFailures = _consecutiveFailures,
        Restarts = Restarts,
        ExitCode = _exitCode,
        KilledAll = _killedAll,
        LastReload = LastReload is { } r ? new ReloadSnapshot { Generation = r.Generation, Succeeded = r.Succeeded, Message = r.Message, AtUs = Us(r.At), TookToReadyUs = Us(r.TookToReady) } : null,
        ReloadsSucceeded = Reloads.Succeeded,
        ReloadsFailed = Reloads.Failed,
        ReloadDurationCounts = [.. Reloads.BucketCounts],
        ReloadDurationSumUs = Us(Reloads.DurationSum),
        Generations = _generations.Select(g => new GenerationSnapshot
        {
            Number = g.Number, Cause = g.Cause.ToString(), Pid = g.Pid, State = g.State.ToString(),
            StartedAtUs = Us(g.StartedAt), ReadyAtUs = Us(g.ReadyAt), StopRequestedAtUs = Us(g.StopRequestedAt), DeadlineUs = Us(g.Deadline),
            Killed = g.Killed, FailedToStart = g.FailedToStart, Status = g.Status, Drain = g.Drain,
            LeaderExit = g.LeaderExit is { } exit ? ExitStatusSnapshot.From(exit) : null,
        }).ToList(),
    };

    /// <summary>A machine that goes on from <paramref name="snapshot"/>: same uptime, generations and deadlines.</summary>
    /// <exception cref="SnapshotException">A value this version does not know, or broken invariants.</exception>
    public static SupervisorStateMachine Import(SupervisorPolicy policy, TimeProvider time, MachineSnapshot snapshot)
    {
        var origin = (long)((Int128)snapshot.OriginMonotonicUs * time.TimestampFrequency / 1_000_000);
        var machine = new SupervisorStateMachine(policy, time, origin)
        {
            Phase = Parse<SupervisorPhase>(snapshot.Phase, "phase"),
            Restarts = snapshot.Restarts,
        };
        machine._lastNumber = snapshot.LastNumber;
        machine._pendingReload = snapshot.PendingReload;
        machine._restartAt = Span(snapshot.RestartAtUs);
        machine._consecutiveFailures = snapshot.ConsecutiveFailures;
        machine._exitCode = snapshot.ExitCode;
        machine._killedAll = snapshot.KilledAll;
        if (snapshot.LastReload is { } r)
            machine.LastReload = new ReloadOutcome(r.Generation, r.Succeeded, r.Message, TimeSpan.FromMicroseconds(r.AtUs), Span(r.TookToReadyUs));
        machine.Reloads.Restore(snapshot.ReloadsSucceeded, snapshot.ReloadsFailed, snapshot.ReloadDurationCounts, snapshot.ReloadDurationSumUs);
        foreach (var s in snapshot.Generations)
        {
            if (s.Number <= 0 || s.Number > snapshot.LastNumber || machine.FindByNumber(s.Number) is not null)
                throw new SnapshotException($"generation number {s.Number} is out of place (last number {snapshot.LastNumber})");
            var g = new Generation(s.Number, Parse<GenerationCause>(s.Cause, "generation cause"), TimeSpan.FromMicroseconds(s.StartedAtUs))
            {
                Pid = s.Pid,
                State = Parse<GenerationState>(s.State, "generation state"),
                ReadyAt = Span(s.ReadyAtUs),
                StopRequestedAt = Span(s.StopRequestedAtUs),
                Deadline = Span(s.DeadlineUs),
                Killed = s.Killed,
                FailedToStart = s.FailedToStart,
                Status = s.Status,
                Drain = s.Drain,
                LeaderExit = s.LeaderExit?.ToExitStatus(),
            };
            if (g.State == GenerationState.Exited) throw new SnapshotException($"generation {s.Number} is listed but has exited");
            if (g.State != GenerationState.Starting && g.Pid is null) throw new SnapshotException($"generation {s.Number} is {s.State} without a pid");
            machine._generations.Add(g);
        }
        if (machine._generations.Count(g => g.State is GenerationState.Starting or GenerationState.Probation) > 1 || machine._generations.Count(g => g.State == GenerationState.Ready) > 1)
            throw new SnapshotException("more than one generation starting or on probation, or more than one serving");
        if (machine.OnProbation is { Deadline: null } || machine.OnProbation is not null && machine.Serving is null)
            throw new SnapshotException("a generation on probation without its end, or without a predecessor serving");
        return machine;
    }

    private long ToMicroseconds(long timestamp) => (long)((Int128)timestamp * 1_000_000 / _time.TimestampFrequency);

    private static long Us(TimeSpan at) => (long)at.TotalMicroseconds;

    private static long? Us(TimeSpan? at) => at is { } t ? Us(t) : null;

    private static TimeSpan? Span(long? us) => us is { } u ? TimeSpan.FromMicroseconds(u) : null;

    private static T Parse<T>(string text, string what) where T : struct, Enum =>
        Enum.TryParse<T>(text, ignoreCase: false, out var value) && Enum.IsDefined(value) && !int.TryParse(text, out _)
            ? value
            : throw new SnapshotException($"unknown {what} '{text}'");

    public SupervisorPolicy Policy => _policy;
    public SupervisorPhase Phase { get; private set; } = SupervisorPhase.Starting;
    /// <summary>Live generations (not yet exited), oldest first.</summary>
    public IReadOnlyList<Generation> Generations => _generations;
    public Generation? Serving => _generations.FirstOrDefault(g => g.State == GenerationState.Ready);
    public Generation? Starting => _generations.FirstOrDefault(g => g.State == GenerationState.Starting);
    /// <summary>The generation serving on probation beside <see cref="Serving"/>, if any; its Deadline is the probation's end.</summary>
    public Generation? OnProbation => _generations.FirstOrDefault(g => g.State == GenerationState.Probation);
    /// <summary>The time left of the probation under way; zero when there is none.</summary>
    public TimeSpan ProbationLeft => OnProbation?.Deadline is { } end && end > Now ? end - Now : TimeSpan.Zero;
    public bool ReloadPending => _pendingReload is not null;
    public TimeSpan? RestartAt => _restartAt;
    public int Restarts { get; private set; }
    /// <summary>Deaths in a row without 10 s of serving in between: what the restart delay doubles with.</summary>
    public int ConsecutiveFailures => _consecutiveFailures;
    public ReloadOutcome? LastReload { get; private set; }
    /// <summary>Counts and durations of the reloads so far.</summary>
    public ReloadStatistics Reloads { get; } = new();

    /// <summary>Time since the state machine was created, on the monotonic clock.</summary>
    public TimeSpan Now => _time.GetElapsedTime(_origin);

    /// <summary>The earliest moment at which <see cref="Tick"/> has something to do, or null.</summary>
    public TimeSpan? NextDeadline
    {
        get
        {
            TimeSpan? next = _restartAt;
            foreach (var g in _generations)
                if (g.Deadline is { } d && (next is null || d < next)) next = d;
            return next;
        }
    }

    public Generation? FindByPid(int pid) => _generations.FirstOrDefault(g => g.Pid == pid);
    public Generation? FindByNumber(int number) => _generations.FirstOrDefault(g => g.Number == number);

    /// <summary>Starts the first generation.</summary>
    public IReadOnlyList<SupervisorEffect> Start()
    {
        if (_lastNumber != 0) throw new InvalidOperationException("already started");
        var fx = new List<SupervisorEffect>();
        Spawn(fx, GenerationCause.Initial);
        return fx;
    }

    public IReadOnlyList<SupervisorEffect> Handle(SupervisorEvent e)
    {
        var fx = new List<SupervisorEffect>();
        if (Phase == SupervisorPhase.Exited) return fx;
        switch (e)
        {
            case SupervisorEvent.ReloadRequested r: OnReloadRequested(fx, r.Source); break;
            case SupervisorEvent.ShutdownRequested s: OnShutdownRequested(fx, s); break;
            case SupervisorEvent.ChildSpawned s: OnSpawned(fx, s); break;
            case SupervisorEvent.SpawnFailed f: OnSpawnFailed(fx, f); break;
            case SupervisorEvent.ChildExited x: OnExited(fx, x); break;
            case SupervisorEvent.ProcessGroupEmpty empty: OnGroupEmpty(fx, empty); break;
            case SupervisorEvent.ReadyReported r: OnReadyReported(fx, r); break;
            case SupervisorEvent.StatusReported s: OnStatus(fx, s); break;
            case SupervisorEvent.DrainAnnounced d: OnDrainAnnounced(fx, d); break;
            case SupervisorEvent.StoppingReported s: OnStopping(fx, s); break;
            case SupervisorEvent.FailureReported f: OnFailureReported(fx, f); break;
            case SupervisorEvent.ProbationEndRequested p: OnProbationEndRequested(fx, p); break;
            default: throw new ArgumentOutOfRangeException(nameof(e), e, "unknown event");
        }
        return fx;
    }

    /// <summary>Acts on every deadline that has come due.</summary>
    public IReadOnlyList<SupervisorEffect> Tick()
    {
        var fx = new List<SupervisorEffect>();
        if (Phase == SupervisorPhase.Exited) return fx;
        var now = Now;
        if (_restartAt is { } at && at <= now)
        {
            _restartAt = null;
            Spawn(fx, GenerationCause.Restart);
        }
        foreach (var g in _generations.ToList())
        {
            if (g.Deadline is not { } deadline || deadline > now) continue;
            g.Deadline = null;
            switch (g.State)
            {
                case GenerationState.Starting when _policy.ReadyMode == ReadyMode.Delay:
                    BecomeReady(fx, g, $"alive after {Duration.Format(_policy.ReadyDelay)} (--ready delay)");
                    break;
                case GenerationState.Starting:
                    Log(fx, LogSeverity.Error,
                        $"{g.Label} sent no READY=1 within {Duration.Format(_policy.ReadyTimeout)}; " +
                        "if the app does not speak sd_notify, use --ready delay:2s, or raise --ready-timeout if it starts slowly", g);
                    StopGeneration(fx, g, failedToStart: true);
                    StartFailed(fx, g, $"{g.Label} sent no READY=1 within {Duration.Format(_policy.ReadyTimeout)}" +
                        (g.Status is { } last ? $" (its last status: {last})" : ""));
                    break;
                case GenerationState.Probation:
                    PassProbation(fx, g, $"passed its probation of {Duration.Format(_policy.Probation)}");
                    break;
                case GenerationState.Draining when !g.Killed:
                    g.Killed = true;
                    Log(fx, LogSeverity.Warning, g.LeaderExit is null
                        ? $"{g.Label} did not exit within {Duration.Format(_policy.StopTimeout)} of {Signals.Name(_policy.StopSignal)}; sending SIGKILL to its process group"
                        : $"the process group of {g.Label} still had processes {Duration.Format(_policy.StopTimeout)} after {Signals.Name(_policy.StopSignal)}; sending SIGKILL to it", g);
                    fx.Add(new SupervisorEffect.SendSignal(g.Number, g.Pid!.Value, Signals.SIGKILL, WholeProcessGroup: true));
                    if (g.LeaderExit is not null) g.Deadline = now + KillGrace;
                    break;
                case GenerationState.Draining when g.LeaderExit is { } leaderExit:
                    Log(fx, LogSeverity.Warning, $"processes of the group of {g.Label} outlived SIGKILL by {Duration.Format(KillGrace)}; no longer waiting for them", g);
                    Finish(fx, g, leaderExit, groupPid: null);
                    break;
            }
        }
        return fx;
    }

    private void OnReloadRequested(List<SupervisorEffect> fx, string source)
    {
        if (Phase == SupervisorPhase.ShuttingDown)
        {
            Log(fx, LogSeverity.Warning, $"reload requested ({source}) while shutting down; ignored");
            return;
        }
        if ((Starting ?? OnProbation) is { } newcomer)
        {
            // One newcomer at a time: the request waits for it, and requests that come meanwhile collapse into one.
            var starting = newcomer.State == GenerationState.Starting;
            if (_pendingReload is null)
                Log(fx, LogSeverity.Info, starting
                    ? $"reload requested ({source}) while {newcomer.Label} is starting; another reload will follow it"
                    : $"reload requested ({source}) while {newcomer.Label} is on probation ({Duration.Format(ProbationLeft)} left); another reload will follow the probation");
            else
                Log(fx, LogSeverity.Debug, starting
                    ? $"reload requested ({source}); already queued behind {newcomer.Label}"
                    : $"reload requested ({source}); already queued behind the probation of {newcomer.Label}");
            _pendingReload = source;
            return;
        }
        if (_restartAt is not null)
        {
            _restartAt = null;
            Log(fx, LogSeverity.Info, $"reload requested ({source}) while waiting to restart; starting now");
            fx.Add(new SupervisorEffect.ReloadStarted(_lastNumber + 1, source));
            Spawn(fx, GenerationCause.Reload);
            return;
        }
        var serving = Serving;
        Log(fx, LogSeverity.Info, serving is null
            ? $"reload requested ({source}); starting generation {_lastNumber + 1}"
            : $"reload requested ({source}); starting generation {_lastNumber + 1} beside {serving.Label}");
        fx.Add(new SupervisorEffect.ReloadStarted(_lastNumber + 1, source));
        Spawn(fx, GenerationCause.Reload);
    }

    private void OnShutdownRequested(List<SupervisorEffect> fx, SupervisorEvent.ShutdownRequested s)
    {
        if (Phase == SupervisorPhase.ShuttingDown)
        {
            if (!s.Interrupt || _killedAll)
            {
                Log(fx, LogSeverity.Info, $"already shutting down ({s.Source} ignored); send SIGINT again to kill at once");
                return;
            }
            _killedAll = true;
            Log(fx, LogSeverity.Warning, $"second {s.Source}: killing every generation at once");
            foreach (var g in _generations.Where(g => g.Pid is not null))
            {
                g.Killed = true;
                g.Deadline = null;
                fx.Add(new SupervisorEffect.SendSignal(g.Number, g.Pid!.Value, Signals.SIGKILL, WholeProcessGroup: true));
            }
            return;
        }
        Log(fx, LogSeverity.Info, _generations.Count == 0
            ? $"{s.Source} received; no child running, exiting"
            : $"{s.Source} received; stopping {Plural(_generations.Count, "generation")} with {Signals.Name(_policy.StopSignal)}");
        BeginShutdown(fx, 0);
    }

    private void OnSpawned(List<SupervisorEffect> fx, SupervisorEvent.ChildSpawned s)
    {
        var g = FindByNumber(s.Generation);
        if (g is null || g.Pid is not null) return;
        g.Pid = s.Pid;
        if (g.State != GenerationState.Starting)
        {
            // Shutdown began while the spawn was under way: stop the new child right away.
            g.State = GenerationState.Starting;
            StopGeneration(fx, g, failedToStart: false);
            return;
        }
        g.Deadline = Now + (_policy.ReadyMode == ReadyMode.Delay ? _policy.ReadyDelay : _policy.ReadyTimeout);
        Log(fx, LogSeverity.Info, $"{g.Label} started{CauseText(g)}; waiting for " +
            (_policy.ReadyMode == ReadyMode.Delay ? $"it to stay up {Duration.Format(_policy.ReadyDelay)}" : $"READY=1 (timeout {Duration.Format(_policy.ReadyTimeout)})"), g);
    }

    private static string CauseText(Generation g) => g.Cause switch
    {
        GenerationCause.Reload => " for reload",
        GenerationCause.Restart => " to replace a crashed one",
        _ => "",
    };

    private void OnSpawnFailed(List<SupervisorEffect> fx, SupervisorEvent.SpawnFailed f)
    {
        var g = FindByNumber(f.Generation);
        if (g is null || g.Pid is not null) return;
        Log(fx, LogSeverity.Error, $"{g.Label} could not be started: {f.Reason}", g);
        g.State = GenerationState.Exited;
        _generations.Remove(g);
        fx.Add(new SupervisorEffect.GenerationGone(g.Number, null));
        if (Phase == SupervisorPhase.ShuttingDown)
        {
            MaybeExit(fx);
            return;
        }
        StartFailed(fx, g, $"{g.Label} could not be started: {f.Reason}", ExitStatus.Exited(1));
    }

    private void OnReadyReported(List<SupervisorEffect> fx, SupervisorEvent.ReadyReported r)
    {
        var g = FindByNumber(r.Generation);
        if (g is null) return;
        if (g.State != GenerationState.Starting || Phase == SupervisorPhase.ShuttingDown)
        {
            Log(fx, LogSeverity.Debug, $"{g.Label} reported READY=1 via {r.Channel} while {g.State.ToString().ToLowerInvariant()}; nothing to do", g);
            return;
        }
        BecomeReady(fx, g, $"READY=1 via {r.Channel}");
    }

    private void OnStatus(List<SupervisorEffect> fx, SupervisorEvent.StatusReported s)
    {
        if (FindByNumber(s.Generation) is not { } g) return;
        g.Status = s.Status;
        Log(fx, LogSeverity.Debug, $"{g.Label} status: {s.Status}", g);
    }

    private void OnDrainAnnounced(List<SupervisorEffect> fx, SupervisorEvent.DrainAnnounced d)
    {
        if (FindByNumber(d.Generation) is not { } g) return;
        g.Drain = d.Description;
        Log(fx, LogSeverity.Debug, $"{g.Label} drains: {d.Description}", g);
    }

    private void OnStopping(List<SupervisorEffect> fx, SupervisorEvent.StoppingReported s)
    {
        if (FindByNumber(s.Generation) is not { } g) return;
        Log(fx, g.State == GenerationState.Draining ? LogSeverity.Debug : LogSeverity.Info, $"{g.Label} reported STOPPING=1", g);
    }

    private void BecomeReady(List<SupervisorEffect> fx, Generation g, string how)
    {
        var now = Now;
        var previous = Serving;
        g.ReadyAt = now;
        g.Deadline = null;
        var took = Duration.Format(now - g.StartedAt);
        if (previous is not null && _policy.Probation > TimeSpan.Zero)
        {
            // Both serve from the shared accept queue; the predecessor is stopped only when the probation passes.
            g.State = GenerationState.Probation;
            g.Deadline = now + _policy.Probation;
            Log(fx, LogSeverity.Info, $"{g.Label} is ready ({how}, after {took}); on probation for {Duration.Format(_policy.Probation)}, serving beside {previous.Label}", g);
            fx.Add(new SupervisorEffect.ProbationStarted(g.Number, _policy.Probation, previous.Number));
            return;
        }
        g.State = GenerationState.Ready;
        if (previous is null)
        {
            Log(fx, LogSeverity.Info, $"{g.Label} is ready ({how}, after {took}); serving", g);
        }
        else
        {
            Log(fx, LogSeverity.Info, $"{g.Label} is ready ({how}, after {took}); stopping {previous.Label}", g);
            StopGeneration(fx, previous, failedToStart: false);
        }
        if (Phase == SupervisorPhase.Starting)
        {
            Phase = SupervisorPhase.Running;
            fx.Add(new SupervisorEffect.ServiceReady(g.Number, g.Pid!.Value));
        }
        if (g.Cause == GenerationCause.Reload)
            FinishReload(fx, new ReloadOutcome(g.Number, true, $"{g.Label} is serving", now, TimeToReady(g)));
        RunPendingReload(fx);
    }

    /// <summary>The probation of <paramref name="g"/> is over without a failure (<paramref name="how"/>): it serves alone, its predecessor is stopped.</summary>
    private void PassProbation(List<SupervisorEffect> fx, Generation g, string how)
    {
        var previous = Serving;
        g.State = GenerationState.Ready;
        g.Deadline = null;
        Log(fx, LogSeverity.Info, previous is null
            ? $"{g.Label} {how}; serving"
            : $"{g.Label} {how}; stopping {previous.Label}", g);
        if (previous is not null) StopGeneration(fx, previous, failedToStart: false);
        fx.Add(new SupervisorEffect.ProbationPassed(g.Number));
        if (g.Cause == GenerationCause.Reload)
            FinishReload(fx, new ReloadOutcome(g.Number, true, $"{g.Label} {how} and is serving", Now, TimeToReady(g)));
        RunPendingReload(fx);
    }

    private void OnProbationEndRequested(List<SupervisorEffect> fx, SupervisorEvent.ProbationEndRequested p)
    {
        if (OnProbation is not { } g || Phase != SupervisorPhase.Running)
        {
            Log(fx, LogSeverity.Info, $"{p.Source}: no generation is on probation; nothing to do");
            return;
        }
        var served = g.ReadyAt is { } ready ? Duration.Format(Now - ready) : "?";
        if (p.Passed)
        {
            PassProbation(fx, g, $"was promoted by {p.Source} after {served} of its probation of {Duration.Format(_policy.Probation)}");
            return;
        }
        Log(fx, LogSeverity.Warning, $"{p.Source}: stopping {g.Label}, which is on probation", g);
        StopGeneration(fx, g, failedToStart: false);
        RollBack(fx, g, $"was stopped by {p.Source}");
    }

    /// <summary>
    /// The generation on probation failed (<paramref name="what"/>: it exited, or reported failure, and is being
    /// stopped): the reload fails and the predecessor, which never stopped serving, serves alone.
    /// </summary>
    private void RollBack(List<SupervisorEffect> fx, Generation g, string what)
    {
        var serving = Serving;
        var after = g.ReadyAt is { } ready ? $", {Duration.Format(Now - ready)} after it was ready" : "";
        var message = $"{g.Label} {what} during its probation{after}; rolled back: " +
            (serving is null ? "nothing else is serving" : $"{serving.Label} serves alone");
        Log(fx, LogSeverity.Warning, message, g);
        FinishReload(fx, new ReloadOutcome(g.Number, false, message, Now));
        RunPendingReload(fx);
    }

    private void OnFailureReported(List<SupervisorEffect> fx, SupervisorEvent.FailureReported f)
    {
        if (FindByNumber(f.Generation) is not { } g) return;
        var said = $"reported failure (WATCHDOG=trigger via {f.Channel}{(g.Status is { } status ? $"; its status: {status}" : "")})";
        if (Phase == SupervisorPhase.ShuttingDown)
        {
            Log(fx, LogSeverity.Info, $"{g.Label} {said} while the supervisor shuts down", g);
            return;
        }
        switch (g.State)
        {
            case GenerationState.Probation:
                Log(fx, LogSeverity.Error, $"{g.Label} {said} during its probation; stopping it", g);
                StopGeneration(fx, g, failedToStart: false);
                RollBack(fx, g, said);
                break;
            case GenerationState.Starting:
                Log(fx, LogSeverity.Error, $"{g.Label} {said} before it was ready; stopping it", g);
                StopGeneration(fx, g, failedToStart: true);
                StartFailed(fx, g, $"{g.Label} {said} before it was ready");
                break;
            case GenerationState.Ready when OnProbation is { } successor:
                Log(fx, LogSeverity.Warning, $"{g.Label} {said} while {successor.Label} is on probation beside it; the probation goes on", g);
                break;
            case GenerationState.Ready when Starting is { } replacement:
                Log(fx, LogSeverity.Warning, $"{g.Label} {said} while serving; {replacement.Label} is already starting to replace it", g);
                break;
            case GenerationState.Ready when _policy.Restart:
                // As systemd restarts a service on WATCHDOG=trigger, but without a gap: a new generation starts
                // beside it, and the failed one serves until its replacement is ready.
                Log(fx, LogSeverity.Error, $"{g.Label} {said} while serving; replacing it", g);
                OnReloadRequested(fx, $"{g.Label} reported failure");
                break;
            case GenerationState.Ready:
                Log(fx, LogSeverity.Error, $"{g.Label} {said} while serving; --no-restart is set, so it serves on until a reload replaces it", g);
                break;
            default:
                Log(fx, LogSeverity.Debug, $"{g.Label} {said} while {g.State.ToString().ToLowerInvariant()}; nothing to do", g);
                break;
        }
    }

    private void OnExited(List<SupervisorEffect> fx, SupervisorEvent.ChildExited x)
    {
        var g = FindByPid(x.Pid);
        if (g is null)
        {
            Log(fx, LogSeverity.Debug, $"reaped pid {x.Pid} ({x.Status}), not a generation");
            return;
        }
        if (g.State == GenerationState.Draining && x.GroupRemains && g.LeaderExit is null)
        {
            // As systemd's KillMode=control-group: the whole group got the stop signal and drains until it is
            // empty; SIGKILL comes only at the stop deadline.
            g.LeaderExit = x.Status;
            if (g.Killed && g.Deadline is null) g.Deadline = Now + KillGrace; // SIGKILLed already: the rest dies now
            Log(fx, LogSeverity.Info, $"{g.Label} exited with {x.Status}; the rest of its process group is still draining", g);
            return;
        }
        Finish(fx, g, x.Status, groupPid: x.Pid);
    }

    private void OnGroupEmpty(List<SupervisorEffect> fx, SupervisorEvent.ProcessGroupEmpty e)
    {
        if (FindByNumber(e.Generation) is not { LeaderExit: { } leaderExit } g) return;
        Log(fx, LogSeverity.Debug, $"the process group of {g.Label} is empty", g);
        Finish(fx, g, leaderExit, groupPid: null);
    }

    /// <summary>A generation is over: its leader exited and, if it was draining, so did the rest of its group.</summary>
    private void Finish(List<SupervisorEffect> fx, Generation g, ExitStatus status, int? groupPid)
    {
        var now = Now;
        var previousState = g.State;
        g.State = GenerationState.Exited;
        g.ExitStatus = status;
        g.Deadline = null;
        _generations.Remove(g);
        fx.Add(new SupervisorEffect.GenerationGone(g.Number, groupPid));

        switch (previousState)
        {
            case GenerationState.Starting:
                Log(fx, LogSeverity.Error, $"{g.Label} exited with {status} before it was ready, after {Duration.Format(now - g.StartedAt)}", g);
                if (Phase != SupervisorPhase.ShuttingDown)
                    StartFailed(fx, g, $"{g.Label} exited with {status} before it was ready", status);
                break;
            case GenerationState.Probation:
                Log(fx, LogSeverity.Error, $"{g.Label} exited with {status} during its probation", g);
                if (Phase != SupervisorPhase.ShuttingDown) RollBack(fx, g, $"exited with {status}");
                break;
            case GenerationState.Ready:
                OnServingDied(fx, g, status, now);
                break;
            case GenerationState.Draining:
                var since = g.StopRequestedAt is { } at ? $" {Duration.Format(now - at)} after it was asked to stop" : "";
                var group = g.LeaderExit is null ? "" : " (its whole process group)";
                Log(fx, status.Success || status.Signal == _policy.StopSignal ? LogSeverity.Info : LogSeverity.Warning,
                    $"{g.Label} exited with {status}{since}{group}", g);
                break;
        }
        MaybeExit(fx);
    }

    private void OnServingDied(List<SupervisorEffect> fx, Generation g, ExitStatus status, TimeSpan now)
    {
        var served = now - (g.ReadyAt ?? now);
        Log(fx, LogSeverity.Error, $"{g.Label} exited unexpectedly with {status} after serving {Duration.Format(served)}", g);
        if (Phase == SupervisorPhase.ShuttingDown) return;
        if (OnProbation is { } successor)
        {
            // Nothing left to roll back to: the newcomer's probation is cut short and it serves alone.
            successor.State = GenerationState.Ready;
            successor.Deadline = null;
            if (served >= _policy.StableAfter) _consecutiveFailures = 0;
            Log(fx, LogSeverity.Warning, $"{successor.Label} was on probation; with {g.Label} gone it serves alone (its probation is cut short)", successor);
            fx.Add(new SupervisorEffect.ProbationPassed(successor.Number));
            if (successor.Cause == GenerationCause.Reload)
                FinishReload(fx, new ReloadOutcome(successor.Number, true,
                    $"{successor.Label} is serving (its probation was cut short: {g.Label} exited with {status})", now, TimeToReady(successor)));
            RunPendingReload(fx);
            return;
        }
        if (!_policy.Restart)
        {
            Log(fx, LogSeverity.Error, $"--no-restart is set: stopping and exiting with status {status.ShellCode}");
            BeginShutdown(fx, status.ShellCode);
            return;
        }
        if (served >= _policy.StableAfter) _consecutiveFailures = 0;
        if (Starting is { } starting)
        {
            Log(fx, LogSeverity.Info, $"{starting.Label} is already starting and will take over", starting);
            return;
        }
        ScheduleRestart(fx);
    }

    private void ScheduleRestart(List<SupervisorEffect> fx)
    {
        _consecutiveFailures++;
        var exponent = Math.Min(_consecutiveFailures - 1, 30);
        var delay = TimeSpan.FromTicks(Math.Min(_policy.RestartBackoffMax.Ticks,
            _policy.RestartBackoffInitial.Ticks * (1L << Math.Min(exponent, 20))));
        _restartAt = Now + delay;
        Log(fx, _consecutiveFailures > 3 ? LogSeverity.Warning : LogSeverity.Info,
            $"restarting in {Duration.Format(delay)} (attempt {_consecutiveFailures}); the listeners stay open and connections queue meanwhile");
    }

    /// <summary>A Starting generation exited, could not be spawned, or missed its ready timeout.</summary>
    private void StartFailed(List<SupervisorEffect> fx, Generation g, string reason, ExitStatus? status = null)
    {
        var serving = Serving;
        if (g.Cause == GenerationCause.Reload)
        {
            var message = serving is null ? $"{reason}; nothing is serving" : $"{reason}; {serving.Label} keeps serving";
            FinishReload(fx, new ReloadOutcome(g.Number, false, message, Now));
        }
        if (serving is not null)
        {
            Log(fx, LogSeverity.Warning, $"rolled back: {serving.Label} keeps serving");
        }
        else if (Phase == SupervisorPhase.Starting)
        {
            var code = status is { } s && !s.Success ? s.ShellCode : 1;
            Log(fx, LogSeverity.Error, $"the first generation never became ready; nothing is serving, exiting with status {code}");
            BeginShutdown(fx, code);
            return;
        }
        else if (_policy.Restart)
        {
            ScheduleRestart(fx);
        }
        else
        {
            var code = status is { } s && !s.Success ? s.ShellCode : 1;
            Log(fx, LogSeverity.Error, $"nothing is serving and --no-restart is set; exiting with status {code}");
            BeginShutdown(fx, code);
            return;
        }
        RunPendingReload(fx);
    }

    private void RunPendingReload(List<SupervisorEffect> fx)
    {
        if (_pendingReload is not { } source || Starting is not null || OnProbation is not null || Phase is SupervisorPhase.ShuttingDown or SupervisorPhase.Exited)
            return;
        _pendingReload = null;
        OnReloadRequested(fx, source + ", queued");
    }

    private void FinishReload(List<SupervisorEffect> fx, ReloadOutcome outcome)
    {
        LastReload = outcome;
        if (!outcome.Abandoned) Reloads.Record(outcome.Succeeded, outcome.TookToReady);
        fx.Add(new SupervisorEffect.ReloadFinished(outcome));
    }

    private static TimeSpan? TimeToReady(Generation g) => g.ReadyAt is { } ready ? ready - g.StartedAt : null;

    private void Spawn(List<SupervisorEffect> fx, GenerationCause cause)
    {
        var g = new Generation(++_lastNumber, cause, Now);
        if (cause == GenerationCause.Restart) Restarts++;
        _generations.Add(g);
        fx.Add(new SupervisorEffect.SpawnGeneration(g.Number));
    }

    private void StopGeneration(List<SupervisorEffect> fx, Generation g, bool failedToStart)
    {
        if (g.State == GenerationState.Draining) return;
        g.State = GenerationState.Draining;
        g.FailedToStart |= failedToStart;
        g.StopRequestedAt = Now;
        if (g.Pid is not { } pid) return; // not spawned yet: OnSpawned stops it
        g.Deadline = Now + _policy.StopTimeout;
        // The whole process group, as systemd's KillMode=control-group: a wrapper that forked its server, or a
        // master whose workers outlive it, drains as one.
        fx.Add(new SupervisorEffect.SendSignal(g.Number, pid, _policy.StopSignal, WholeProcessGroup: true));
    }

    private void BeginShutdown(List<SupervisorEffect> fx, int exitCode)
    {
        Phase = SupervisorPhase.ShuttingDown;
        fx.Add(new SupervisorEffect.ShuttingDown());
        _exitCode = exitCode;
        _pendingReload = null;
        _restartAt = null;
        foreach (var g in _generations.ToList())
        {
            if (g.State is GenerationState.Starting or GenerationState.Probation && g.Cause == GenerationCause.Reload)
                FinishReload(fx, new ReloadOutcome(g.Number, false, g.State == GenerationState.Probation
                    ? $"reload abandoned during the probation of {g.Label}: the supervisor is shutting down"
                    : "reload abandoned: the supervisor is shutting down", Now, Abandoned: true));
            StopGeneration(fx, g, failedToStart: false);
        }
        MaybeExit(fx);
    }

    private void MaybeExit(List<SupervisorEffect> fx)
    {
        if (Phase != SupervisorPhase.ShuttingDown || _generations.Count > 0) return;
        Phase = SupervisorPhase.Exited;
        Log(fx, LogSeverity.Info, $"all children have exited; exiting with status {_exitCode}");
        fx.Add(new SupervisorEffect.ExitSupervisor(_exitCode));
    }

    // about: the generation the line is about, if any; its number and pid go with the line as fields.
    private static void Log(List<SupervisorEffect> fx, LogSeverity severity, string message, Generation? about = null) =>
        fx.Add(new SupervisorEffect.Log(severity, message, about?.Number, about?.Pid));

    private static string Plural(int n, string word) => n == 1 ? $"1 {word}" : $"{n} {word}s";
}
