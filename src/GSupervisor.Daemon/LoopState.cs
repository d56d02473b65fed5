using GSupervisor.Core;
using GSupervisor.Daemon.Os;

namespace GSupervisor.Daemon;

/// <summary>What the event loop's thread takes from its queue: everything that happens to the supervisor.</summary>
internal abstract record LoopEvent
{
    public sealed record Signal(int Number) : LoopEvent;
    public sealed record ChildExited(int Pid, ExitStatus Status) : LoopEvent;
    public sealed record Notify(ReceivedDatagram Datagram) : LoopEvent;
    public sealed record HandoffConnected(HandoffConnection Connection) : LoopEvent;
    public sealed record HandoffLine(int Generation, HandoffConnection Connection, byte[] Line) : LoopEvent;
    public sealed record HandoffClosed(int Generation, HandoffConnection Connection) : LoopEvent;
    public sealed record Error(string Message) : LoopEvent;
    /// <summary>Something a child or another user did that was refused: logged at a capped rate.</summary>
    public sealed record Refusal(string Message) : LoopEvent;
    public sealed record WatchdogDue : LoopEvent;
    public sealed record Control(ControlRequest Request) : LoopEvent;
    /// <summary>A scrape of the Prometheus endpoint (Os/MetricsServer.cs).</summary>
    public sealed record Metrics(MetricsRequest Request) : LoopEvent;
    /// <summary>The upgrade check's process wrote all it will write (or ran out of time).</summary>
    public sealed record UpgradeCheckOutput(int Pid, string Output, bool TimedOut) : LoopEvent;
}

/// <summary>How the last in-place upgrade (or attempt) went, for status.</summary>
internal sealed record UpgradeOutcome(bool Succeeded, string Message, TimeSpan At, TimeSpan? Took);

/// <summary>
/// The event loop's state, all of it that crosses an in-place upgrade, in one place: the generation state
/// machine, the handoff connections of the generations, the control requests still to be answered, the
/// generations' output, and the few facts the loop remembers. Only the loop's thread touches it.
/// (Everything else an upgrade carries is in the kernel: the listeners, the sockets' queues, pending signals,
/// zombies. See Upgrade/UpgradeState.cs for the document it becomes.)
/// </summary>
internal sealed class LoopState(SupervisorStateMachine machine, IReadOnlyList<string> command)
{
    public SupervisorStateMachine Machine { get; } = machine;
    /// <summary>
    /// The command new generations run: the command line's, until `reload -- COMMAND` puts another into service (it
    /// becomes this once a generation running it serves, so a crash restart never runs a command that failed).
    /// </summary>
    public IReadOnlyList<string> Command { get; set; } = command;
    /// <summary>The command a reload asked for, for the next generation a reload starts; null: <see cref="Command"/>.</summary>
    public IReadOnlyList<string>? NextCommand { get; set; }
    /// <summary>The last reload refused before it started (its reason, and when), for status and systemd's STATUS=.</summary>
    public (string Reason, TimeSpan At)? LastRefusal { get; set; }
    /// <summary>What each live generation was started with (Launcher.cs).</summary>
    public Dictionary<int, Launch> Launches { get; } = [];
    /// <summary>Each generation's open handoff connections.</summary>
    public Dictionary<int, List<HandoffConnection>> Connections { get; } = [];
    /// <summary>`reload --wait` callers: answered once a reload of at least MinGeneration has finished.</summary>
    public List<(int MinGeneration, ControlRequest Request)> ReloadWaiters { get; } = [];
    /// <summary>`upgrade --wait` callers: answered when the new image serves, or the upgrade was refused.</summary>
    public List<ControlRequest> UpgradeWaiters { get; } = [];
    /// <summary>The last output of the newest generations, for the answer to a failed reload.</summary>
    public Dictionary<int, OutputTail> OutputTails { get; } = [];
    /// <summary>Signals and control requests that came while an upgrade was under way: handled after it, in order.</summary>
    public List<LoopEvent> Deferred { get; } = [];
    /// <summary>SIGINTs so far (a second one kills at once).</summary>
    public int Interrupts { get; set; }
    /// <summary>Whether the line about a generation without a drain was logged (once per supervisor).</summary>
    public bool SaidNoDrain { get; set; }
    /// <summary>In-place upgrades since the supervisor started.</summary>
    public int Upgrades { get; set; }
    public UpgradeOutcome? LastUpgrade { get; set; }
}
