using GSupervisor.Core;
using GSupervisor.Daemon.Os;

namespace GSupervisor.Daemon.Upgrade;

/// <summary>
/// The new image's side of an in-place upgrade: the objects of the earlier image, made again from the state
/// document around the fds that crossed the exec. Every crossed fd gets FD_CLOEXEC back.
/// </summary>
internal static class HandedOver
{
    /// <summary>What the upgrade check runs in the new binary: everything below that reads the document, without the fds.</summary>
    /// <exception cref="UpgradeStateException">Something in it this version cannot take over.</exception>
    public static void Check(UpgradeState carried, SupervisorPolicy policy)
    {
        foreach (var l in carried.Listeners) Listener(l);
        Machine(carried, policy);
    }

    public static List<BoundListener> Listeners(UpgradeState carried)
    {
        var listeners = carried.Listeners.Select(Listener).ToList();
        ExecImage.MarkCloseOnExec([.. listeners.Select(l => l.Fd), carried.NotifyFd, carried.HandoffFd, carried.ControlFd]);
        return listeners;
    }

    /// <summary>
    /// The Prometheus endpoint: the earlier image's socket, or, when that image served none (--metrics is the same
    /// command line, so only a version without it), a new one bound now.
    /// </summary>
    public static MetricsServer? Metrics(UpgradeState carried, ListenSpec? spec)
    {
        if (spec is null)
        {
            if (carried.MetricsFd >= 0) Mono.Unix.Native.Syscall.close(carried.MetricsFd); // never into a child
            return null;
        }
        if (carried.MetricsFd < 0) return MetricsServer.Bind(spec);
        ExecImage.MarkCloseOnExec([carried.MetricsFd]);
        // A socket file is removed on exit only while it is still the one bound (its inode, as --listen's are).
        var path = spec.Kind == ListenKind.Unix && !spec.UnixPath!.StartsWith('@') ? spec.UnixPath : null;
        var inode = path is not null && Mono.Unix.Native.Syscall.lstat(path, out var st) == 0 ? st.st_ino : 0;
        return MetricsServer.Adopt(new BoundListener(spec, carried.MetricsFd, carried.MetricsAddress ?? spec.Text, path, inode));
    }

    private static BoundListener Listener(ListenerState l) =>
        ListenSpec.TryParse(l.Spec, out var spec, out var error)
            ? new BoundListener(spec! with { Name = l.Name }, l.Fd, l.Address, l.UnixPathToRemove, l.UnixInode)
            : throw new UpgradeStateException($"listener '{l.Spec}' (fd {l.Fd}): {error}");

    private static SupervisorStateMachine Machine(UpgradeState carried, SupervisorPolicy policy)
    {
        try
        {
            return SupervisorStateMachine.Import(policy, TimeProvider.System, carried.Machine);
        }
        catch (SnapshotException e)
        {
            throw new UpgradeStateException(e.Message);
        }
    }

    /// <param name="command">The command line's command: what runs unless the earlier image carried another (an older one carries none).</param>
    public static LoopState LoopState(UpgradeState carried, SupervisorPolicy policy, IReadOnlyList<string> command, OutputRelay output, IntakeGate gate)
    {
        var machine = Machine(carried, policy);
        var state = new LoopState(machine, carried.Command.Count > 0 ? carried.Command : command)
        {
            Interrupts = carried.Interrupts,
            SaidNoDrain = carried.SaidNoDrain,
            Upgrades = carried.Upgrades,
            NextCommand = carried.NextCommand is { Count: > 0 } next ? next : null,
        };
        foreach (var l in carried.Launches.Where(l => l.Argv.Count > 0))
            state.Launches[l.Generation] = new Launch(l.Argv, l.CommandPath, l.Directory, l.ChangesDirectory, [], []);
        foreach (var c in carried.HandoffConnections)
        {
            ExecImage.MarkCloseOnExec([c.Fd]);
            var list = state.Connections.TryGetValue(c.Generation, out var existing) ? existing : state.Connections[c.Generation] = [];
            list.Add(new HandoffConnection(c.Fd, c.PeerPid, c.PeerUid, gate, c.Pending));
        }
        foreach (var o in carried.Outputs)
        {
            ExecImage.MarkCloseOnExec(new[] { o.StdoutFd, o.StderrFd }.Where(fd => fd >= 0));
            var tail = new OutputTail(o.Generation, (o.StdoutFd >= 0 ? 1 : 0) + (o.StderrFd >= 0 ? 1 : 0), o.Tail);
            output.Adopt(o.StdoutFd, o.StderrFd, tail);
            state.OutputTails[o.Generation] = tail; // the older ones go at the next spawn, as they would have
        }
        foreach (var w in carried.ReloadWaiters)
            state.ReloadWaiters.Add((w.MinGeneration, Request(w.Fd, "reload wait")));
        foreach (var fd in carried.UpgradeWaiterFds)
            state.UpgradeWaiters.Add(Request(fd, "upgrade wait"));
        foreach (var d in carried.Deferred)
        {
            if (d.Signal is { } signal) state.Deferred.Add(new LoopEvent.Signal(signal));
            else if (d is { ControlFd: { } fd, ControlLine: { } line }) state.Deferred.Add(new LoopEvent.Control(Request(fd, line)));
        }
        return state;
    }

    private static ControlRequest Request(int fd, string line)
    {
        ExecImage.MarkCloseOnExec([fd]);
        return new ControlRequest(fd) { Line = line };
    }
}
