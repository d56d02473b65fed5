// The control protocol: what the loop answers on the control socket (see Os/ControlServer.cs for the socket).
// Requests: "status", "status json", "reload", "reload wait" (either with the next generation's command as JSON, see
// ReloadRequest.cs), "promote", "rollback", "upgrade", "upgrade wait", "stop". Replies start with OK, FAILED (the
// reload or upgrade did not happen; the rest says why), REFUSED CODE (a reload that would not run, refused before
// anything started: the exit code a first start would end with, then the reason) or ERR (the request itself was wrong).

using GSupervisor.Core;
using GSupervisor.Daemon.Os;

namespace GSupervisor.Daemon;

internal sealed partial class SupervisorHost
{
    private int? OnControl(ControlRequest request)
    {
        if (ReloadRequest.TryParse(request.Line, out var malformed) is { } reload) return OnReloadRequested(request, reload);
        if (malformed is not null)
        {
            request.Reply("ERR " + malformed);
            return null;
        }
        switch (request.Line)
        {
            case "status":
                request.Reply("OK " + StatusReport.Text(_machine, _listeners, _settings, Identity(), CurrentLaunches()));
                return null;
            case "status json":
                request.Reply("OK " + StatusReport.Json(_machine, _listeners, _settings, Identity(), CurrentLaunches()));
                return null;
            case "promote" or "rollback":
            {
                var source = "gsupervisor " + request.Line;
                if (_machine.OnProbation is not { } probation)
                {
                    request.Reply("FAILED no generation is on probation");
                    return null;
                }
                var effects = _machine.Handle(new SupervisorEvent.ProbationEndRequested(request.Line == "promote", source));
                // Its own outcome: a reload queued behind the probation may start (and finish) in the same step.
                var outcome = effects.OfType<SupervisorEffect.ReloadFinished>().FirstOrDefault(r => r.Outcome.Generation == probation.Number)?.Outcome;
                var decided = Execute(effects);
                request.Reply(outcome is not null ? $"OK {outcome.Message}" : $"OK {probation.Label} {(request.Line == "promote" ? "promoted" : "rolled back")}");
                return decided;
            }
            case "upgrade" or "upgrade wait":
                return OnUpgradeRequested(request, wait: request.Line == "upgrade wait");
            case "stop":
                request.Reply("OK stopping");
                return Execute(_machine.Handle(new SupervisorEvent.ShutdownRequested("gsupervisor stop", Interrupt: false)));
            default:
                request.Reply($"ERR unknown request '{request.Line}'");
                return null;
        }
    }

    /// <summary>
    /// A reload asked for on the control socket. What the next generation would start with is planned first (its
    /// directory, command and environment file as they are now): a plan that cannot run is refused with its reason
    /// before anything starts or stops, and the serving generation goes on. A command given stays the one reloads run
    /// once a generation running it serves (see AdoptCommandOfServing).
    /// </summary>
    private int? OnReloadRequested(ControlRequest request, ReloadRequest reload)
    {
        if (_machine.Phase == SupervisorPhase.ShuttingDown)
        {
            request.Reply("FAILED the supervisor is shutting down");
            return null;
        }
        var command = reload.Command ?? _state.NextCommand ?? _state.Command;
        try
        {
            var plan = _parts.Launcher.Plan(command);
            foreach (var warning in plan.Warnings) _log.Warning("{Message}", warning);
        }
        catch (StartupException e)
        {
            var serving = _machine.Serving is { } s ? $"; {s.Label} serves on" : "";
            _log.Error("reload refused: {Message}{Serving}", e.Message, serving);
            _state.LastRefusal = (e.Message, _machine.Now);
            _systemd?.Send("STATUS=" + StatusLine());
            request.Reply($"REFUSED {e.ExitCode} {e.Message}{serving}");
            return null;
        }
        if (reload.Command is { } next)
        {
            _state.NextCommand = next;
            if (!next.SequenceEqual(_state.Command))
                _log.Information("the next generation runs `{Command}` (gsupervisor reload --)", string.Join(' ', next));
        }
        var lastBefore = _machine.LastReload;
        var exit = Execute(_machine.Handle(new SupervisorEvent.ReloadRequested("gsupervisor reload")));
        if (_machine.OnProbation is { } onProbation && _machine.ReloadPending)
        {
            // Queued behind the probation: it runs when the probation passes or fails.
            if (!reload.Wait) request.Reply($"OK reload queued behind the probation of generation {onProbation.Number} (generation {onProbation.Number + 1})");
            else _state.ReloadWaiters.Add((onProbation.Number + 1, request));
            return exit;
        }
        if (_machine.Starting is not { } starting)
        {
            if (_machine.LastReload is { } finished && !ReferenceEquals(finished, lastBefore))
                ReplyWithOutcome([request], finished);
            else
                request.Reply(_machine.Phase == SupervisorPhase.ShuttingDown ? "FAILED the supervisor is shutting down" : "FAILED no reload was started");
            return exit;
        }
        var target = _machine.ReloadPending ? starting.Number + 1 : starting.Number;
        if (!reload.Wait) request.Reply($"OK reload started (generation {target})");
        else _state.ReloadWaiters.Add((target, request));
        return exit;
    }

    /// <summary>Requests that change what runs wait while an upgrade hands over (status is answered at once).</summary>
    private static bool ChangesWhatRuns(ControlRequest request) =>
        request.Line is "promote" or "rollback" or "stop" || ReloadRequest.TryParse(request.Line, out _) is not null;

    private StatusReport.Launches CurrentLaunches() => new(_state.Launches, _state.Command, _state.NextCommand, _parts.Launcher, _state.LastRefusal);

    private StatusReport.Identity Identity() => new(_parts.Executable, _state.Upgrades, _state.LastUpgrade);

    private void AnswerReloadWaiters(ReloadOutcome outcome)
    {
        var answered = _state.ReloadWaiters.Where(w => outcome.Generation >= w.MinGeneration).Select(w => w.Request).ToList();
        _state.ReloadWaiters.RemoveAll(w => outcome.Generation >= w.MinGeneration);
        if (answered.Count > 0) ReplyWithOutcome(answered, outcome);
    }

    /// <summary>
    /// Answers reload requests with an outcome. A failure carries the failed generation's last output; a child
    /// that just died may still have its last words in its pipes, so that reply waits for them (200 ms at most)
    /// off the event loop, which never waits on a child. While an upgrade is under way the reply goes at once, from
    /// the loop, so no exec can cut it off (the request is in no list that crosses by then).
    /// </summary>
    private void ReplyWithOutcome(IReadOnlyList<ControlRequest> requests, ReloadOutcome outcome)
    {
        if (outcome.Succeeded || !_state.OutputTails.TryGetValue(outcome.Generation, out var tail))
        {
            var reply = outcome.Succeeded ? $"OK reload succeeded: {outcome.Message}" : $"FAILED {outcome.Message}\n(generation {outcome.Generation} wrote no output)";
            foreach (var request in requests) request.Reply(reply);
            return;
        }
        var exited = _machine.FindByNumber(outcome.Generation) is null; // one still alive (being stopped) is not waited for
        void Answer(bool waitForEnd)
        {
            if (waitForEnd) tail.WaitForEnd(TimeSpan.FromMilliseconds(200));
            var text = tail.LastLines(20);
            var reply = $"FAILED {outcome.Message}" + (text.Length == 0
                ? $"\n(generation {outcome.Generation} wrote no output)"
                : $"\nlast output of generation {outcome.Generation}:\n{text}");
            foreach (var request in requests) request.Reply(reply);
        }
        if (_upgrade?.Check is not null || _parts.Gate.IsClosed)
        {
            Answer(waitForEnd: false);
            return;
        }
        var gate = _parts.Gate;
        _ = Task.Run(() =>
        {
            using (gate.Enter()) Answer(exited); // an upgrade that starts meanwhile waits for this answer before it execs
        });
    }
}
