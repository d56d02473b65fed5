// Overview
// --------
// The event loop: the only thread that touches the state machine, spawns children and sends signals.
// Everything else (signal handlers, the reaper, the notify and handoff threads) only posts events to its
// queue. Each turn it waits for the next event or the machine's next deadline (no polling: an idle
// supervisor blocks here), feeds it to the machine, and carries out the effects the machine returns.
// Attribution of notify messages and handoff connections to a generation (by the sender's process group, see
// Os/ProcessTree.cs) happens here, since only the loop knows the live generations.
//
// What children (or anyone of their uid) send cannot grow the queue without bound: notify datagrams, handoff
// connections and handoff lines pass a gate of UntrustedInFlight places, and the thread that read them waits
// for a place. The kernel's socket buffers then fill and the senders wait (or get EAGAIN), as under systemd.
// Signals, child exits and control requests never wait at the gate.
//
// The loop's state lives in one object, LoopState, so that an in-place upgrade (SupervisorHost.Upgrade.cs) can
// carry all of it to the new image; the control protocol is in SupervisorHost.Control.cs.

using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.InteropServices;
using GSupervisor.Core;
using GSupervisor.Daemon.Os;
using GSupervisor.Daemon.Upgrade;
using Mono.Unix.Native;
using Serilog;
using Serilog.Events;

namespace GSupervisor.Daemon;

/// <summary>What a host is made of: the settings, the OS objects it runs on, and how it logs.</summary>
internal sealed record HostParts(
    RunSettings Settings,
    IReadOnlyList<string> Arguments,
    Launcher Launcher,
    string Executable,
    IReadOnlyList<BoundListener> Listeners,
    Spawner Spawner,
    RuntimeDirectory RuntimeDirectory,
    ControlServer Control,
    NotifyServer Notify,
    HandoffServer Handoff,
    OutputRelay Output,
    IntakeGate Gate,
    string? DotnetHook,
    SupervisorSignals Signals,
    Action<TimeSpan> FlushLog,
    ILogger Log,
    MetricsServer? Metrics = null);

internal sealed partial class SupervisorHost
{
    private const int MaxHandoffConnectionsPerGeneration = 16;
    private const int UntrustedInFlight = 128;
    private const int OutputTailsKept = 4;

    private readonly HostParts _parts;
    private readonly RunSettings _settings;
    private readonly IReadOnlyList<BoundListener> _listeners;
    private readonly ILogger _log;
    private readonly LoopState _state;
    private readonly SupervisorStateMachine _machine;
    private readonly BlockingCollection<LoopEvent> _queue = new();
    private readonly SemaphoreSlim _untrustedGate = new(UntrustedInFlight, UntrustedInFlight);
    private readonly Reaper _reaper;
    private readonly uint _expectedUid;
    private readonly SystemdNotifier? _systemd;
    /// <summary>The state an earlier image handed over, when this one was started by an in-place upgrade.</summary>
    private readonly UpgradeState? _carried;
    private Timer? _watchdog;
    private static readonly TimeSpan RefusalWindow = TimeSpan.FromMinutes(1);
    private const int RefusalsPerWindow = 20;
    private TimeSpan _refusalWindowStart = TimeSpan.MinValue / 2;
    private int _refusalsInWindow;
    private long _refusalsSuppressed;
    private long _refusalsDroppedAtGate;

    /// <param name="carried">The state of an earlier image (in-place upgrade), which <paramref name="state"/> was restored from.</param>
    public SupervisorHost(HostParts parts, LoopState state, UpgradeState? carried = null)
    {
        _parts = parts;
        _settings = parts.Settings;
        _listeners = parts.Listeners;
        _log = parts.Log;
        _state = state;
        _machine = state.Machine;
        _carried = carried;
        _reaper = new Reaper((pid, status) => Post(new LoopEvent.ChildExited(pid, status)),
            message => Post(new LoopEvent.Error(message)));
        _expectedUid = _settings.User?.Uid ?? Syscall.geteuid();
        if (_settings.User is { } user && carried is null)
            parts.RuntimeDirectory.GrantTo(user.Uid, user.Gid, [parts.Notify.Path, parts.Handoff.Path]);
        _systemd = SystemdNotifier.FromEnvironment(message => _log.Warning("{Message}", message));
    }

    private void Post(LoopEvent e) => _queue.Add(e);

    /// <summary>Posts what a child sent, waiting first for a place at the gate (see the overview).</summary>
    private void PostUntrusted(LoopEvent e)
    {
        _untrustedGate.Wait();
        _queue.Add(e);
    }

    /// <summary>For threads that must not wait (the control socket's): with the gate full, the refusal is only counted.</summary>
    private void PostRefusalWithoutWaiting(string message)
    {
        if (_untrustedGate.Wait(0)) _queue.Add(new LoopEvent.Refusal(message));
        else Interlocked.Increment(ref _refusalsDroppedAtGate);
    }

    private static bool IsUntrusted(LoopEvent e) => e is LoopEvent.Notify or LoopEvent.HandoffConnected or LoopEvent.HandoffLine or LoopEvent.Refusal;

    /// <summary>Runs until the machine says exit; returns the exit code.</summary>
    public int Run()
    {
        _reaper.Start();
        var gate = _parts.Gate;
        _parts.Notify.Start(d => PostUntrusted(new LoopEvent.Notify(d)), m => Post(new LoopEvent.Error(m)), gate);
        _parts.Handoff.Start(c => PostUntrusted(new LoopEvent.HandoffConnected(c)), m => Post(new LoopEvent.Error(m)), gate);
        foreach (var (generation, connections) in _state.Connections)
            foreach (var c in connections) StartReading(generation, c);
        _parts.Signals.DeliverTo(signal => Post(new LoopEvent.Signal(signal)), gate);
        _parts.Control.Start(r => Post(new LoopEvent.Control(r)), PostRefusalWithoutWaiting, gate);
        _parts.Metrics?.Start(r => Post(new LoopEvent.Metrics(r)), gate); // it keeps its own budget of waiting scrapes
        if (_systemd?.WatchdogInterval is { } interval)
            _watchdog = new Timer(_ => Post(new LoopEvent.WatchdogDue()), null, TimeSpan.Zero, interval);

        var exitCode = _carried is { } carried ? ResumeAfterUpgrade(carried) : Execute(_machine.Start());
        while (exitCode is null)
        {
            var timeout = Timeout.InfiniteTimeSpan;
            // The machine's next deadline, or the end of a refusal window with refusals left to report.
            TimeSpan? next = _machine.NextDeadline;
            if (_refusalsSuppressed > 0 && (next is null || _refusalWindowStart + RefusalWindow < next))
                next = _refusalWindowStart + RefusalWindow;
            if (next is { } deadline)
            {
                var remaining = deadline - _machine.Now;
                // Round up to whole milliseconds so the wait never ends just short of the deadline.
                timeout = remaining <= TimeSpan.Zero ? TimeSpan.Zero : TimeSpan.FromMilliseconds(Math.Ceiling(remaining.TotalMilliseconds));
            }
            if (_queue.TryTake(out var e, timeout))
                exitCode = HandleSafely(e);
            exitCode ??= Execute(_machine.Tick());
            exitCode ??= AdvanceUpgrade();
            ReportSuppressedRefusals();
        }
        foreach (var (_, request) in _state.ReloadWaiters) request.Reply("FAILED the supervisor exited before the reload finished");
        foreach (var request in _state.UpgradeWaiters) request.Reply("FAILED the supervisor exited before the upgrade");
        foreach (var deferred in _state.Deferred)
            if (deferred is LoopEvent.Control c) c.Request.Reply("FAILED the supervisor has exited");
        while (_queue.TryTake(out var left))
        {
            switch (left)
            {
                case LoopEvent.Control c: c.Request.Reply("FAILED the supervisor has exited"); break;
                case LoopEvent.Notify n: n.Datagram.Release(); break; // a waiting systemd-notify returns now
                case LoopEvent.HandoffConnected h: h.Connection.Refuse("the supervisor has exited"); break;
                case LoopEvent.Metrics m: m.Request.Answer(503, "Service Unavailable", "text/plain", "the supervisor has exited\n", withBody: true); break;
            }
        }
        _watchdog?.Dispose();
        _systemd?.Dispose();
        return exitCode.Value;
    }

    /// <summary>What a signal asks of the state machine.</summary>
    private int? OnSignal(int signal)
    {
        SupervisorEvent? e = signal switch
        {
            Signals.SIGUSR2 => new SupervisorEvent.ReloadRequested("SIGUSR2"),
            Signals.SIGHUP => new SupervisorEvent.ReloadRequested("SIGHUP"),
            Signals.SIGTERM => new SupervisorEvent.ShutdownRequested("SIGTERM", Interrupt: false),
            Signals.SIGQUIT => new SupervisorEvent.ShutdownRequested("SIGQUIT", Interrupt: false),
            Signals.SIGINT => new SupervisorEvent.ShutdownRequested(++_state.Interrupts == 1 ? "SIGINT" : "SIGINT (again)", Interrupt: true),
            _ => null,
        };
        return e is null ? null : Execute(_machine.Handle(e));
    }

    /// <summary>A bug in handling one event is logged; the supervisor keeps its children and goes on.</summary>
    private int? HandleSafely(LoopEvent e)
    {
        if (Defers(e))
        {
            _state.Deferred.Add(e); // handled once the upgrade under way is done (SupervisorHost.Upgrade.cs)
            return null;
        }
        try
        {
            return Handle(e);
        }
        catch (Exception ex)
        {
            _log.Error(ex, "internal error while handling {Event}; carrying on", e.GetType().Name);
            if (e is LoopEvent.Control c && !c.Request.Answered) c.Request.Reply("ERR internal error in the supervisor; see its log");
            if (e is LoopEvent.Metrics m) m.Request.Answer(500, "Internal Server Error", "text/plain", "internal error in the supervisor; see its log\n", withBody: true);
            return null;
        }
        finally
        {
            if (e is LoopEvent.ChildExited exited) _reaper.Reap(exited.Pid); // only now may its pid be reused
            if (e is LoopEvent.Notify n) n.Datagram.Release(); // a BARRIER=1 sender learns its messages were handled
            if (IsUntrusted(e)) _untrustedGate.Release();
        }
    }

    private int? Handle(LoopEvent e)
    {
        switch (e)
        {
            case LoopEvent.Signal s:
                return OnSignal(s.Number);
            case LoopEvent.ChildExited x when _upgrade?.Check is { } check && check.Pid == x.Pid:
                return OnUpgradeCheckExited(check, x.Status);
            case LoopEvent.UpgradeCheckOutput o:
                return OnUpgradeCheckOutput(o);
            case LoopEvent.ChildExited x:
            {
                // A draining generation's leader may exit before the rest of its group (a wrapper that forked its
                // server): the group then drains on until it is empty or the stop timeout's SIGKILL.
                var groupRemains = _machine.FindByPid(x.Pid) is { State: GenerationState.Draining } && ProcessTree.HasLiveMembers(x.Pid, except: x.Pid);
                var exit = Execute(_machine.Handle(new SupervisorEvent.ChildExited(x.Pid, x.Status, groupRemains)));
                foreach (var g in _machine.Generations.Where(g => g.LeaderExit is not null).ToList())
                    if (!ProcessTree.HasLiveMembers(g.Pid!.Value, except: g.Pid.Value))
                        exit ??= Execute(_machine.Handle(new SupervisorEvent.ProcessGroupEmpty(g.Number)));
                return exit;
            }
            case LoopEvent.Notify n:
                return OnNotify(n.Datagram);
            case LoopEvent.HandoffConnected c:
                OnHandoffConnected(c.Connection);
                return null;
            case LoopEvent.HandoffLine l:
                return OnNotifyLine(l.Generation, l.Line, "handoff socket");
            case LoopEvent.HandoffClosed c:
                if (_state.Connections.TryGetValue(c.Generation, out var list)) list.Remove(c.Connection);
                return null;
            case LoopEvent.Control c:
                return OnControl(c.Request);
            case LoopEvent.Metrics m:
                OnMetrics(m.Request);
                return null;
            case LoopEvent.WatchdogDue:
                _systemd?.Send("WATCHDOG=1"); // from the loop itself: a stuck loop stops the pings
                return null;
            case LoopEvent.Error err:
                _log.Error("{Message}", err.Message);
                return null;
            case LoopEvent.Refusal r:
                LogRefusal(r.Message);
                return null;
            default:
                throw new InvalidOperationException($"unknown loop event {e}");
        }
    }

    private int? Execute(IReadOnlyList<SupervisorEffect> effects)
    {
        int? exit = null;
        foreach (var effect in effects)
        {
            switch (effect)
            {
                case SupervisorEffect.Log l:
                    (l.Generation is { } about ? _log.ForContext("Generation", about).ForContext("Pid", l.Pid) : _log)
                        .Write(ToLevel(l.Severity), "{Message}", l.Message);
                    break;
                case SupervisorEffect.SpawnGeneration s:
                    exit ??= Execute(_machine.Handle(SpawnGeneration(s.Generation)));
                    break;
                case SupervisorEffect.SendSignal s:
                    SendSignal(s);
                    break;
                case SupervisorEffect.GenerationGone g:
                    _state.Launches.Remove(g.Generation);
                    if (_state.Connections.Remove(g.Generation, out var connections))
                        foreach (var c in connections) c.Shutdown();
                    // The leader is still an unreaped zombie here, so its process-group id cannot have been reused.
                    if (g.Pid is { } leader && Syscall.kill(-leader, Signum.SIGKILL) == 0)
                        _log.Debug("ended what was left of the process group of generation {Generation}", g.Generation);
                    break;
                case SupervisorEffect.ReloadFinished r:
                    _log.ForContext("Generation", r.Outcome.Generation).Write(
                        r.Outcome.Succeeded ? LogEventLevel.Information : r.Outcome.Abandoned ? LogEventLevel.Warning : LogEventLevel.Error,
                        "reload {Result}: {Message}", r.Outcome.Succeeded ? "succeeded" : r.Outcome.Abandoned ? "abandoned" : "failed", r.Outcome.Message);
                    AdoptCommandOfServing();
                    if (_machine.Phase != SupervisorPhase.ShuttingDown)
                        _systemd?.Send("READY=1\nSTATUS=" + StatusLine());
                    AnswerReloadWaiters(r.Outcome);
                    break;
                case SupervisorEffect.ServiceReady:
                    AdoptCommandOfServing();
                    _systemd?.Send("READY=1\nSTATUS=" + StatusLine());
                    break;
                case SupervisorEffect.ProbationStarted p:
                    SendLine(p.Generation, HandoffProtocol.EncodeProbation(p.Length));
                    // systemd's reload job goes on until READY=1, which comes when the probation ends.
                    _systemd?.Send($"STATUS=reloading: generation {p.Generation} is on probation for {Duration.Format(p.Length)}, serving beside generation {p.Predecessor}");
                    break;
                case SupervisorEffect.ProbationPassed p:
                    SendLine(p.Generation, HandoffProtocol.ProbationPassedLine);
                    break;
                case SupervisorEffect.ReloadStarted r:
                    _systemd?.Send($"RELOADING=1\nMONOTONIC_USEC={SystemdNotifier.MonotonicMicroseconds()}\nSTATUS=reloading ({r.Source}): starting generation {r.Generation}");
                    break;
                case SupervisorEffect.ShuttingDown:
                    _systemd?.Send("STOPPING=1\nSTATUS=stopping");
                    break;
                case SupervisorEffect.ExitSupervisor x:
                    exit = x.Code;
                    break;
            }
        }
        return exit;
    }

    private void OnMetrics(MetricsRequest request)
    {
        if (request.Path != "/metrics")
            request.Answer(404, "Not Found", "text/plain", "not found: the metrics are at /metrics\n", withBody: request.Method != "HEAD");
        else if (request.Method is not ("GET" or "HEAD"))
            request.Answer(405, "Method Not Allowed", "text/plain", "use GET\n", withBody: true, extraHeader: "Allow: GET, HEAD\r\n");
        else
            request.Answer(200, "OK", MetricsText.ContentType, MetricsText.Render(_machine, _state.Upgrades), withBody: request.Method == "GET");
    }

    /// <summary>Writes a line to every handoff connection of a generation.</summary>
    private void SendLine(int generation, string line)
    {
        if (_state.Connections.TryGetValue(generation, out var connections))
            foreach (var c in connections) c.SendLine(line);
    }

    /// <summary>One line for systemd's STATUS=: who serves, and how the last reload went.</summary>
    private string StatusLine()
    {
        var serving = _machine.Serving is { } g ? $"serving generation {g.Number} (pid {g.Pid})" : "nothing serving";
        if (_state.LastRefusal is { } refused && (_machine.LastReload is null || _machine.LastReload.At < refused.At))
            return $"{serving}; last reload refused: {refused.Reason}";
        return _machine.LastReload is { } last
            ? $"{serving}; last reload {(last.Succeeded ? "succeeded" : "failed: " + last.Message)}"
            : serving;
    }

    private SupervisorEvent SpawnGeneration(int generation)
    {
        // A reload runs the command it asked for (`reload -- COMMAND`); every other start runs the current one.
        var argv = _state.Command;
        if (_machine.FindByNumber(generation) is { Cause: GenerationCause.Reload } && _state.NextCommand is { } next)
        {
            argv = next;
            _state.NextCommand = null;
        }
        Launch launch;
        try
        {
            launch = _parts.Launcher.Plan(argv);
        }
        catch (StartupException e)
        {
            return new SupervisorEvent.SpawnFailed(generation, e.Message);
        }
        foreach (var warning in launch.Warnings) _log.Warning("{Message}", warning);
        var environment = ChildEnvironment.Build(_settings, _listeners, _parts.Notify.Path, _parts.Handoff.Path, _parts.DotnetHook, launch);
        environment.Add("GSUPERVISOR_GENERATION=" + generation.ToString(CultureInfo.InvariantCulture));
        environment.Add("SERVER_STARTER_GENERATION=" + generation.ToString(CultureInfo.InvariantCulture)); // Server::Starter's name for it
        (int StdoutWrite, int StderrWrite, OutputTail Tail)? output = null;
        try
        {
            output = _parts.Output.Start(generation);
            _state.OutputTails[generation] = output.Value.Tail;
            foreach (var old in _state.OutputTails.Keys.Where(k => k <= generation - OutputTailsKept).ToList()) _state.OutputTails.Remove(old);
            var pid = _parts.Spawner.Spawn(new SpawnRequest(launch.CommandPath, launch.Argv, environment,
                _listeners.Select(l => l.Fd).ToList(), _settings.Policy.StopSignal, _settings.User,
                output.Value.StdoutWrite, output.Value.StderrWrite, launch.ChangesDirectory ? launch.Directory : null));
            _reaper.ChildStarted();
            _state.Launches[generation] = launch;
            _log.ForContext("Generation", generation).Debug("generation {Generation} runs `{Command}` in {Directory}", generation, string.Join(' ', launch.Argv), launch.Directory);
            return new SupervisorEvent.ChildSpawned(generation, pid);
        }
        catch (SpawnException e)
        {
            return new SupervisorEvent.SpawnFailed(generation, e.Message);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException or InvalidOperationException)
        {
            return new SupervisorEvent.SpawnFailed(generation, e.Message);
        }
        finally
        {
            // The child has its copies (or never started): the relays see end of file once the child's are closed.
            if (output is { } o)
            {
                Syscall.close(o.StdoutWrite);
                Syscall.close(o.StderrWrite);
            }
        }
    }

    /// <summary>
    /// Once a generation serves, its command is the one later reloads, restarts and upgrades run: a command put in by
    /// `reload -- COMMAND` stays only if it got as far as serving.
    /// </summary>
    private void AdoptCommandOfServing()
    {
        if (_machine.Serving is not { } serving || !_state.Launches.TryGetValue(serving.Number, out var launch)) return;
        if (launch.Argv.SequenceEqual(_state.Command)) return;
        _state.Command = launch.Argv;
        _log.ForContext("Generation", serving.Number).Information("generation {Generation} serves with the command `{Command}`; later reloads, restarts and upgrades run it",
            serving.Number, string.Join(' ', launch.Argv));
    }

    private void SendSignal(SupervisorEffect.SendSignal s)
    {
        // Apps on the client library hear "drain" on their handoff connection, whatever the stop signal is.
        if (s.Signal == _settings.Policy.StopSignal && s.Signal != Signals.SIGKILL) SendLine(s.Generation, HandoffProtocol.DrainLine);
        var target = s.WholeProcessGroup ? -s.Pid : s.Pid;
        _log.Debug("sending {Signal} to {Target}", Signals.Name(s.Signal), s.WholeProcessGroup ? $"process group {s.Pid}" : $"pid {s.Pid}");
        if (Syscall.kill(target, NativeConvert.ToSignum(s.Signal)) != 0)
        {
            var errno = ErrorNumbers.Last;
            // ESRCH: it exited and the reaper's report is on its way; for a group, the leader may be gone already.
            if (errno != ErrorNumbers.ESRCH)
                _log.Warning("cannot send {Signal} to generation {Generation} (pid {Pid}): {Error}", Signals.Name(s.Signal), s.Generation, s.Pid, ErrorNumbers.Describe(errno));
            else if (s.WholeProcessGroup && Syscall.kill(s.Pid, NativeConvert.ToSignum(s.Signal)) != 0 && ErrorNumbers.Last != ErrorNumbers.ESRCH)
                _log.Warning("cannot send {Signal} to pid {Pid}", Signals.Name(s.Signal), s.Pid);
        }
    }

    private int? OnNotify(ReceivedDatagram d)
    {
        if (d.FdsDiscarded > 0)
            _log.Debug("closed {Count} fds sent with a notify message by pid {Pid} (fd store is not supported)", d.FdsDiscarded, d.SenderPid);
        // sd_notify_barrier(): nothing to act on; its fd is closed once this turn ends (see UnixMessages).
        if (d.HeldFd >= 0 && !d.Truncated && d.Data.AsSpan().TrimEnd((byte)'\n').SequenceEqual("BARRIER=1"u8))
            return null;
        if (d.Truncated)
        {
            LogRefusal($"dropped a notify message from pid {d.SenderPid}: larger than {NotifyMessage.MaxBytes} bytes");
            return null;
        }
        if (!PeerRule.Trusted(d.SenderUid, _expectedUid))
        {
            LogRefusal($"dropped a notify message from pid {d.SenderPid}: uid {d.SenderUid} is not the children's uid {_expectedUid}");
            return null;
        }
        if (FindGeneration(d.SenderPid) is not { } generation)
        {
            LogRefusal($"dropped a notify message from pid {d.SenderPid}: not a process of any running generation");
            return null;
        }
        return OnNotifyLine(generation, d.Data, "NOTIFY_SOCKET");
    }

    private int? OnNotifyLine(int generation, byte[] data, string channel)
    {
        if (!NotifyMessage.TryParse(data, out var message, out var error))
        {
            LogRefusal($"dropped a message from generation {generation} on the {channel}: {error}");
            return null;
        }
        int? exit = null;
        if (message!.Status is { } status)
            exit ??= Execute(_machine.Handle(new SupervisorEvent.StatusReported(generation, status)));
        if (message.Drain is { } drain)
            exit ??= Execute(_machine.Handle(new SupervisorEvent.DrainAnnounced(generation, drain)));
        if (message.Ready)
        {
            exit ??= Execute(_machine.Handle(new SupervisorEvent.ReadyReported(generation, channel)));
            if (_parts.DotnetHook is not null && !_state.SaidNoDrain && _machine.Serving is { Drain: null } serving && serving.Number == generation)
            {
                _state.SaidNoDrain = true;
                _log.Information("{Generation} announced no drain ({Field}=): gsupervisor's ASP.NET Core integration is not in it (not an ASP.NET Core app, " +
                    "or a trimmed or Native AOT one, where .NET startup hooks are off), so what a reload does to its connections is up to its own handling of {Signal}",
                    serving.Label, HandoffProtocol.DrainField, Signals.Name(_settings.Policy.StopSignal));
            }
        }
        if (message.FailureReported)
            exit ??= Execute(_machine.Handle(new SupervisorEvent.FailureReported(generation, channel)));
        if (message.Stopping)
            exit ??= Execute(_machine.Handle(new SupervisorEvent.StoppingReported(generation)));
        return exit;
    }

    private void OnHandoffConnected(HandoffConnection c)
    {
        if (!PeerRule.Trusted(c.PeerUid, _expectedUid))
        {
            LogRefusal($"refused a handoff connection from pid {c.PeerPid}: uid {c.PeerUid} is not the children's uid {_expectedUid}");
            c.Refuse("wrong uid");
            return;
        }
        if (FindGeneration(c.PeerPid) is not { } generation)
        {
            LogRefusal($"refused a handoff connection from pid {c.PeerPid}: not a process of any running generation");
            c.Refuse("not a process of a running generation");
            return;
        }
        var list = _state.Connections.TryGetValue(generation, out var existing) ? existing : _state.Connections[generation] = [];
        if (list.Count >= MaxHandoffConnectionsPerGeneration)
        {
            LogRefusal($"refused a handoff connection from pid {c.PeerPid}: generation {generation} already holds {list.Count}");
            c.Refuse("too many connections");
            return;
        }
        var errno = c.SendGreeting(generation, _listeners.Select(l => l.Spec.FdName).ToList(), _listeners.Select(l => l.Fd).ToList());
        if (errno != 0)
        {
            LogRefusal($"could not send the listeners to pid {c.PeerPid} of generation {generation}: {ErrorNumbers.Describe(errno)}");
            c.Refuse("send failed");
            return;
        }
        list.Add(c);
        _log.Debug("handed {Count} listeners to pid {Pid} of generation {Generation} over the handoff socket", _listeners.Count, c.PeerPid, generation);
        if (_machine.OnProbation?.Number == generation)
            c.SendLine(HandoffProtocol.EncodeProbation(_machine.ProbationLeft)); // it connected after the probation began
        StartReading(generation, c);
    }

    private void StartReading(int generation, HandoffConnection c) =>
        c.StartReading(
            line => PostUntrusted(new LoopEvent.HandoffLine(generation, c, line)),
            problem => PostUntrusted(new LoopEvent.Refusal($"closed the handoff connection of pid {c.PeerPid} (generation {generation}): {problem}")),
            () => Post(new LoopEvent.HandoffClosed(generation, c)));

    /// <summary>The generation <paramref name="pid"/> belongs to: the one whose leader leads its process group (see ProcessTree).</summary>
    private int? FindGeneration(int pid) =>
        ProcessTree.ProcessGroupOf(pid) is { } group && _machine.FindByPid(group) is { } g ? g.Number : null;

    /// <summary>
    /// Refusals are logged, but a child flooding the sockets cannot flood the log: at most
    /// <see cref="RefusalsPerWindow"/> lines per <see cref="RefusalWindow"/>; when the window ends, one line
    /// says how many were left out.
    /// </summary>
    private void LogRefusal(string message)
    {
        RollRefusalWindow();
        if (++_refusalsInWindow > RefusalsPerWindow)
        {
            _refusalsSuppressed++;
            return;
        }
        _log.Warning("{Message}", message);
    }

    /// <summary>Called every turn of the loop: a window with refusals left out that has ended is reported.</summary>
    private void ReportSuppressedRefusals()
    {
        if (_refusalsSuppressed > 0 || Interlocked.Read(ref _refusalsDroppedAtGate) > 0) RollRefusalWindow();
    }

    private void RollRefusalWindow()
    {
        _refusalsSuppressed += Interlocked.Exchange(ref _refusalsDroppedAtGate, 0);
        var now = _machine.Now;
        if (now - _refusalWindowStart < RefusalWindow) return;
        if (_refusalsSuppressed > 0)
            _log.Warning("{Count} more refusals like those above were not logged in the last minute", _refusalsSuppressed);
        _refusalsSuppressed = 0;
        _refusalsInWindow = 0;
        _refusalWindowStart = now;
    }

    private static LogEventLevel ToLevel(LogSeverity s) => s switch
    {
        LogSeverity.Debug => LogEventLevel.Debug,
        LogSeverity.Info => LogEventLevel.Information,
        LogSeverity.Warning => LogEventLevel.Warning,
        _ => LogEventLevel.Error,
    };
}
