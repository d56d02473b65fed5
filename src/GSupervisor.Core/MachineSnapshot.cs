// Overview
// --------
// The generation state machine as data, for the in-place upgrade: the running image exports it, the new image
// (possibly another version of gsupervisor) imports it and goes on where the old one stopped. It is part of a
// versioned document (the daemon's UpgradeState): fields are only ever added, never renamed or re-purposed; a
// reader ignores fields it does not know and defaults the ones it does not find.
//
// Times are microseconds on CLOCK_MONOTONIC (the TimeProvider's timestamps): the origin absolutely, everything
// else relative to it. CLOCK_MONOTONIC runs on across execve, so every deadline (a drain's stop timeout, a
// ready timeout, the restart backoff) comes due in the new image when it would have in the old one.

namespace GSupervisor.Core;

/// <summary>Everything <see cref="SupervisorStateMachine"/> knows, as plain data.</summary>
public sealed record MachineSnapshot
{
    /// <summary>When the machine was created (uptime counts from here), in microseconds of the monotonic clock.</summary>
    public long OriginMonotonicUs { get; set; }
    public string Phase { get; set; } = nameof(SupervisorPhase.Running);
    public int LastNumber { get; set; }
    public string? PendingReload { get; set; }
    public long? RestartAtUs { get; set; }
    public int ConsecutiveFailures { get; set; }
    public int Restarts { get; set; }
    public int ExitCode { get; set; }
    public bool KilledAll { get; set; }
    public ReloadSnapshot? LastReload { get; set; }
    public List<GenerationSnapshot> Generations { get; set; } = [];
    public long ReloadsSucceeded { get; set; }
    public long ReloadsFailed { get; set; }
    /// <summary>The reload duration histogram's counts per bucket (see ReloadStatistics), not cumulative.</summary>
    public List<long> ReloadDurationCounts { get; set; } = [];
    public long ReloadDurationSumUs { get; set; }
}

public sealed record ReloadSnapshot
{
    public int Generation { get; set; }
    public bool Succeeded { get; set; }
    public string Message { get; set; } = "";
    public long AtUs { get; set; }
    public long? TookToReadyUs { get; set; }
}

public sealed record GenerationSnapshot
{
    public int Number { get; set; }
    public string Cause { get; set; } = nameof(GenerationCause.Initial);
    public int? Pid { get; set; }
    public string State { get; set; } = nameof(GenerationState.Ready);
    public long StartedAtUs { get; set; }
    public long? ReadyAtUs { get; set; }
    public long? StopRequestedAtUs { get; set; }
    public long? DeadlineUs { get; set; }
    public bool Killed { get; set; }
    public bool FailedToStart { get; set; }
    public string? Status { get; set; }
    public string? Drain { get; set; }
    public ExitStatusSnapshot? LeaderExit { get; set; }
}

public sealed record ExitStatusSnapshot
{
    public int? Code { get; set; }
    public int? Signal { get; set; }
    public bool CoreDumped { get; set; }

    public static ExitStatusSnapshot From(ExitStatus s) => new() { Code = s.Code, Signal = s.Signal, CoreDumped = s.CoreDumped };
    public ExitStatus ToExitStatus() => new(Code, Signal, CoreDumped);
}

/// <summary>A snapshot that cannot be imported: a value this version does not know, or one that breaks the machine's invariants.</summary>
public sealed class SnapshotException(string message) : Exception(message);
