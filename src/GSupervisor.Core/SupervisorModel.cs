namespace GSupervisor.Core;

/// <summary>How the supervisor learns that a new generation is ready to serve.</summary>
public enum ReadyMode
{
    /// <summary>The child says <c>READY=1</c> on NOTIFY_SOCKET or the handoff connection.</summary>
    Notify,
    /// <summary>The child counts as ready once it has stayed alive for <see cref="SupervisorPolicy.ReadyDelay"/>.</summary>
    Delay,
}

/// <summary>The supervisor's settings that the generation state machine needs.</summary>
public sealed record SupervisorPolicy
{
    public ReadyMode ReadyMode { get; init; } = ReadyMode.Notify;
    public TimeSpan ReadyDelay { get; init; } = TimeSpan.FromSeconds(2);
    public TimeSpan ReadyTimeout { get; init; } = TimeSpan.FromSeconds(60);
    public TimeSpan StopTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public int StopSignal { get; init; } = Signals.SIGTERM;
    /// <summary>Restart a serving child that dies; when false the supervisor exits with the child's status.</summary>
    public bool Restart { get; init; } = true;
    public TimeSpan RestartBackoffInitial { get; init; } = TimeSpan.FromMilliseconds(250);
    public TimeSpan RestartBackoffMax { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>A generation that served this long before dying resets the restart backoff.</summary>
    public TimeSpan StableAfter { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>
    /// How long a reloaded generation serves beside its predecessor before the predecessor is stopped (--probation).
    /// Zero: the predecessor is stopped as soon as its successor is ready.
    /// </summary>
    public TimeSpan Probation { get; init; } = TimeSpan.Zero;
}

/// <summary>
/// Where a generation is in its life. <see cref="Probation"/>: ready and serving beside the generation it is to
/// replace, which is stopped only once the probation passes; a generation on probation that exits or reports
/// failure is stopped instead, and its predecessor serves on (a rollback).
/// </summary>
public enum GenerationState { Starting, Probation, Ready, Draining, Exited }

/// <summary>Why a generation was started.</summary>
public enum GenerationCause { Initial, Reload, Restart }

public enum SupervisorPhase { Starting, Running, ShuttingDown, Exited }

public enum LogSeverity { Debug, Info, Warning, Error }

/// <summary>One child process and everything the supervisor knows about it.</summary>
public sealed class Generation
{
    internal Generation(int number, GenerationCause cause, TimeSpan startedAt)
    {
        Number = number;
        Cause = cause;
        StartedAt = startedAt;
    }

    public int Number { get; }
    public GenerationCause Cause { get; }
    public int? Pid { get; internal set; }
    public GenerationState State { get; internal set; } = GenerationState.Starting;
    public TimeSpan StartedAt { get; }
    public TimeSpan? ReadyAt { get; internal set; }
    public TimeSpan? StopRequestedAt { get; internal set; }
    /// <summary>When the state machine next acts on this generation by itself (ready delay, ready timeout, kill).</summary>
    public TimeSpan? Deadline { get; internal set; }
    public bool Killed { get; internal set; }
    /// <summary>True when this generation was stopped because it failed to become ready.</summary>
    public bool FailedToStart { get; internal set; }
    /// <summary>The last STATUS= the child reported.</summary>
    public string? Status { get; internal set; }
    /// <summary>How the child said it drains on its stop signal (X_GSUPERVISOR_DRAIN=), or null when it said nothing.</summary>
    public string? Drain { get; internal set; }
    public ExitStatus? ExitStatus { get; internal set; }
    /// <summary>How the leader exited while the rest of its process group drains on; null while the leader lives.</summary>
    public ExitStatus? LeaderExit { get; internal set; }

    public string Label => Pid is { } pid ? $"generation {Number} (pid {pid})" : $"generation {Number}";
}

/// <summary>
/// The outcome of a reload, for logs, status and control replies. <paramref name="TookToReady"/>: for one that
/// succeeded, the time from the new generation's start to its READY. <paramref name="Abandoned"/>: it did not
/// succeed because the supervisor began to shut down, which is no failure of the new generation.
/// </summary>
public sealed record ReloadOutcome(int Generation, bool Succeeded, string Message, TimeSpan At, TimeSpan? TookToReady = null, bool Abandoned = false);

/// <summary>Inputs to <see cref="SupervisorStateMachine"/>.</summary>
public abstract record SupervisorEvent
{
    public sealed record ReloadRequested(string Source) : SupervisorEvent;
    /// <summary>Stop everything and exit. <paramref name="Interrupt"/> is true for SIGINT: a second one kills at once.</summary>
    public sealed record ShutdownRequested(string Source, bool Interrupt) : SupervisorEvent;
    public sealed record ChildSpawned(int Generation, int Pid) : SupervisorEvent;
    public sealed record SpawnFailed(int Generation, string Reason) : SupervisorEvent;
    /// <summary>A generation's leader (or another child) exited. <paramref name="GroupRemains"/>: other members of its process group are still alive.</summary>
    public sealed record ChildExited(int Pid, ExitStatus Status, bool GroupRemains = false) : SupervisorEvent;
    /// <summary>The last member of a generation's process group is gone, after its leader exited with it still draining.</summary>
    public sealed record ProcessGroupEmpty(int Generation) : SupervisorEvent;
    public sealed record ReadyReported(int Generation, string Channel) : SupervisorEvent;
    public sealed record StatusReported(int Generation, string Status) : SupervisorEvent;
    public sealed record DrainAnnounced(int Generation, string Description) : SupervisorEvent;
    public sealed record StoppingReported(int Generation) : SupervisorEvent;
    /// <summary>The generation says it has failed (sd_notify's <c>WATCHDOG=trigger</c>); its STATUS= says why, when it said.</summary>
    public sealed record FailureReported(int Generation, string Channel) : SupervisorEvent;
    /// <summary>An operator ends the probation now: <paramref name="Passed"/> promotes the generation on probation, else it is rolled back.</summary>
    public sealed record ProbationEndRequested(bool Passed, string Source) : SupervisorEvent;
}

/// <summary>Outputs of <see cref="SupervisorStateMachine"/>: what the OS edge must do.</summary>
public abstract record SupervisorEffect
{
    /// <summary>Start generation <paramref name="Generation"/>; answer with ChildSpawned or SpawnFailed.</summary>
    public sealed record SpawnGeneration(int Generation) : SupervisorEffect;
    public sealed record SendSignal(int Generation, int Pid, int Signal, bool WholeProcessGroup) : SupervisorEffect;
    /// <summary>A log line; <paramref name="Generation"/> and <paramref name="Pid"/> name the generation it is about, if any.</summary>
    public sealed record Log(LogSeverity Severity, string Message, int? Generation = null, int? Pid = null) : SupervisorEffect;
    public sealed record ReloadFinished(ReloadOutcome Outcome) : SupervisorEffect;
    /// <summary>A reload began: generation <paramref name="Generation"/> is being started to replace the serving one.</summary>
    public sealed record ReloadStarted(int Generation, string Source) : SupervisorEffect;
    /// <summary>The supervisor has begun to stop everything and exit.</summary>
    public sealed record ShuttingDown : SupervisorEffect;
    /// <summary>The first generation is ready: the service is up.</summary>
    public sealed record ServiceReady(int Generation, int Pid) : SupervisorEffect;
    /// <summary>
    /// Generation <paramref name="Generation"/> is ready and on probation for <paramref name="Length"/> beside
    /// <paramref name="Predecessor"/>, which keeps serving; the reload finishes when the probation ends.
    /// </summary>
    public sealed record ProbationStarted(int Generation, TimeSpan Length, int Predecessor) : SupervisorEffect;
    /// <summary>Generation <paramref name="Generation"/>'s probation is over and it serves alone (its predecessor is stopping, or gone).</summary>
    public sealed record ProbationPassed(int Generation) : SupervisorEffect;
    /// <summary>
    /// A generation's process is gone: release what is tied to it (handoff connections), and end whatever is left
    /// of the process group <paramref name="Pid"/> leads, so no orphaned worker keeps serving old code on the
    /// shared listeners. <paramref name="Pid"/> is null when there is no group to end: it never started, or its
    /// group already drained to empty (its id may then be reused).
    /// </summary>
    public sealed record GenerationGone(int Generation, int? Pid) : SupervisorEffect;
    public sealed record ExitSupervisor(int Code) : SupervisorEffect;
}
