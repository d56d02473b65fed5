// Overview
// --------
// The document the running image hands to the new one across an in-place upgrade: everything the event loop
// knows that is not in the kernel already, and the numbers of the fds that cross the exec. JSON, in a memfd
// whose number the new image finds in GSUPERVISOR_UPGRADE_STATE.
//
// Compatibility rules, so any two versions can upgrade into each other: "format" changes only if a change
// cannot be read by older versions, which is never meant to happen; otherwise fields are only added, never
// renamed or given another meaning. A reader ignores fields it does not know (an older image reading a newer
// document) and defaults those it does not find (a newer image reading an older one). Times are microseconds of
// CLOCK_MONOTONIC, which runs on across exec.

using GSupervisor.Core;

namespace GSupervisor.Daemon.Upgrade;

internal sealed class UpgradeState
{
    /// <summary>The format this version writes and the oldest it reads.</summary>
    public const int CurrentFormat = 1, OldestReadable = 1;

    public int Format { get; set; } = CurrentFormat;
    /// <summary>The gsupervisor version that wrote it.</summary>
    public string WrittenBy { get; set; } = "";
    /// <summary>When the upgrade was asked for: its duration runs from here until the new image serves.</summary>
    public long RequestedAtUs { get; set; }
    /// <summary>In-place upgrades done before this one, since the supervisor started.</summary>
    public int Upgrades { get; set; }
    /// <summary>
    /// The resolved path of the command the supervisor runs now. Versions that looked the command up once, at start,
    /// read only this; it is written for them (a newer image plans each start itself, see Launcher.cs).
    /// </summary>
    public string CommandPath { get; set; } = "";
    /// <summary>The command the supervisor runs now (put into service by `reload -- COMMAND`); empty: the command line's.</summary>
    public List<string> Command { get; set; } = [];
    /// <summary>The command a reload asked for that has not started yet, or null.</summary>
    public List<string>? NextCommand { get; set; }
    /// <summary>What each live generation was started with (status shows it; a successful reload's command becomes <see cref="Command"/>).</summary>
    public List<LaunchState> Launches { get; set; } = [];
    public MachineSnapshot Machine { get; set; } = new();
    public List<ListenerState> Listeners { get; set; } = [];
    public string RuntimeDirectory { get; set; } = "";
    public int NotifyFd { get; set; } = -1;
    public int HandoffFd { get; set; } = -1;
    public int ControlFd { get; set; } = -1;
    /// <summary>The Prometheus endpoint's socket (--metrics), or -1 when there is none.</summary>
    public int MetricsFd { get; set; } = -1;
    public string? MetricsAddress { get; set; }
    public List<ConnectionState> HandoffConnections { get; set; } = [];
    public List<OutputState> Outputs { get; set; } = [];
    public List<WaiterState> ReloadWaiters { get; set; } = [];
    /// <summary>`gsupervisor upgrade --wait` callers, answered by the new image.</summary>
    public List<int> UpgradeWaiterFds { get; set; } = [];
    /// <summary>Signals and control requests that came during the upgrade, handled by the new image first, in order.</summary>
    public List<DeferredState> Deferred { get; set; } = [];
    public int Interrupts { get; set; }
    public bool SaidNoDrain { get; set; }
#if STATE_TEST_FIELD
    /// <summary>Only in the test build that stands for a newer version with a field added (make test's next build).</summary>
    public string? AddedInTestBuild { get; set; } = "added by the test build";
#endif

    /// <summary>The fds the document names, which cross the exec.</summary>
    public List<int> CrossingFds() =>
    [
        .. Listeners.Select(l => l.Fd), NotifyFd, HandoffFd, ControlFd, .. MetricsFd >= 0 ? [MetricsFd] : Array.Empty<int>(),
        .. HandoffConnections.Select(c => c.Fd),
        .. Outputs.SelectMany(o => new[] { o.StdoutFd, o.StderrFd }).Where(fd => fd >= 0),
        .. ReloadWaiters.Select(w => w.Fd), .. UpgradeWaiterFds,
        .. Deferred.Where(d => d.ControlFd is not null).Select(d => d.ControlFd!.Value),
    ];

    /// <summary>The document (see UpgradeStateJson for how each field is written and read).</summary>
    public byte[] ToJson() => UpgradeStateJson.Write(this);

    /// <exception cref="UpgradeStateException">Not a state this version can read.</exception>
    public static UpgradeState FromJson(ReadOnlySpan<byte> json)
    {
        var state = UpgradeStateJson.Read(json);
        if (state.Format < OldestReadable || state.Format > CurrentFormat)
            throw new UpgradeStateException($"the upgrade state has format {state.Format}; gsupervisor {CommandLineReader.Version} reads formats {OldestReadable} to {CurrentFormat}");
        return state;
    }
}

internal sealed class ListenerState
{
    /// <summary>The --listen text it came from.</summary>
    public string Spec { get; set; } = "";
    public string? Name { get; set; }
    public int Fd { get; set; } = -1;
    public string Address { get; set; } = "";
    public string? UnixPathToRemove { get; set; }
    public ulong UnixInode { get; set; }
}

internal sealed class LaunchState
{
    public int Generation { get; set; }
    public List<string> Argv { get; set; } = [];
    public string CommandPath { get; set; } = "";
    public string Directory { get; set; } = "";
    public bool ChangesDirectory { get; set; }
}

internal sealed class ConnectionState
{
    public int Generation { get; set; }
    public int Fd { get; set; } = -1;
    public int PeerPid { get; set; }
    public int PeerUid { get; set; }
    /// <summary>Bytes of a line not finished yet.</summary>
    public byte[] Pending { get; set; } = [];
}

internal sealed class OutputState
{
    public int Generation { get; set; }
    /// <summary>The read ends of its stdout and stderr pipes, -1 once at end of file.</summary>
    public int StdoutFd { get; set; } = -1;
    public int StderrFd { get; set; } = -1;
    /// <summary>The last bytes it wrote (what a failed reload's answer shows).</summary>
    public byte[] Tail { get; set; } = [];
}

internal sealed class WaiterState
{
    public int Fd { get; set; } = -1;
    public int MinGeneration { get; set; }
}

internal sealed class DeferredState
{
    public int? Signal { get; set; }
    public int? ControlFd { get; set; }
    public string? ControlLine { get; set; }
}

internal sealed class UpgradeStateException(string message) : Exception(message);

