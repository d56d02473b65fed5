using GSupervisor.Core;
using Microsoft.Extensions.Time.Testing;
using static GSupervisor.Core.SupervisorEffect;
using static GSupervisor.Core.SupervisorEvent;

namespace GSupervisor.Tests.Unit;

/// <summary>The reload protocol, driven event by event with a fake clock.</summary>
public class StateMachineTests
{
    private FakeTimeProvider _clock = null!;
    private SupervisorStateMachine _machine = null!;
    private int _nextPid;

    private SupervisorStateMachine Create(SupervisorPolicy? policy = null)
    {
        _clock = new FakeTimeProvider();
        _nextPid = 1000;
        _spawnFails = null; // the fixture's instance is shared by its tests
        _machine = new SupervisorStateMachine(policy ?? new SupervisorPolicy(), _clock);
        return _machine;
    }

    /// <summary>When set and true for a spawn, that spawn fails (SpawnFailed) instead of succeeding.</summary>
    private Func<bool>? _spawnFails;

    /// <summary>Feeds effects back as the OS edge would: every spawn succeeds with the next pid, unless <see cref="_spawnFails"/> says otherwise.</summary>
    private List<SupervisorEffect> Run(IReadOnlyList<SupervisorEffect> effects)
    {
        var all = new List<SupervisorEffect>();
        foreach (var e in effects)
        {
            all.Add(e);
            if (e is SpawnGeneration s)
                all.AddRange(Run(_machine.Handle(_spawnFails?.Invoke() == true
                    ? new SpawnFailed(s.Generation, "failed as the test asked")
                    : new ChildSpawned(s.Generation, ++_nextPid))));
        }
        return all;
    }

    private List<SupervisorEffect> On(SupervisorEvent e) => Run(_machine.Handle(e));
    private List<SupervisorEffect> Advance(TimeSpan by)
    {
        _clock.Advance(by);
        return Run(_machine.Tick());
    }

    private int PidOf(int generation) => _machine.FindByNumber(generation)!.Pid!.Value;

    /// <summary>Starts generation 1 and makes it ready.</summary>
    private void StartServing(SupervisorPolicy? policy = null)
    {
        Create(policy);
        Run(_machine.Start());
        On(new ReadyReported(1, "test"));
        Assert.That(_machine.Serving?.Number, Is.EqualTo(1));
    }

    private static IEnumerable<SendSignal> Signals(IEnumerable<SupervisorEffect> fx) => fx.OfType<SendSignal>();

    [Test]
    public void Start_spawns_generation_one_and_waits_for_ready()
    {
        Create();
        var fx = Run(_machine.Start());
        Assert.That(fx.OfType<SpawnGeneration>().Single().Generation, Is.EqualTo(1));
        Assert.That(_machine.Phase, Is.EqualTo(SupervisorPhase.Starting));
        Assert.That(_machine.Starting!.Pid, Is.EqualTo(1001));
        Assert.That(_machine.NextDeadline, Is.EqualTo(TimeSpan.FromSeconds(60)));
    }

    [Test]
    public void Ready_of_first_generation_makes_the_service_ready()
    {
        Create();
        Run(_machine.Start());
        var fx = On(new ReadyReported(1, "test"));
        Assert.That(fx.OfType<ServiceReady>().Single(), Is.EqualTo(new ServiceReady(1, 1001)));
        Assert.That(_machine.Phase, Is.EqualTo(SupervisorPhase.Running));
        Assert.That(_machine.NextDeadline, Is.Null, "nothing to wait for while serving");
    }

    [Test]
    public void Reload_stops_the_old_generation_only_after_the_new_one_is_ready()
    {
        StartServing();
        var fx = On(new ReloadRequested("SIGUSR2"));
        Assert.That(fx.OfType<SpawnGeneration>().Single().Generation, Is.EqualTo(2));
        Assert.That(fx.OfType<ReloadStarted>().Single(), Is.EqualTo(new ReloadStarted(2, "SIGUSR2")));
        Assert.That(Signals(fx), Is.Empty, "generation 1 keeps serving while 2 starts");

        fx = On(new ReadyReported(2, "test"));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(1, PidOf(1), Core.Signals.SIGTERM, WholeProcessGroup: true)));
        Assert.That(fx.OfType<ReloadFinished>().Single().Outcome.Succeeded, Is.True);
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));
        Assert.That(_machine.FindByNumber(1)!.State, Is.EqualTo(GenerationState.Draining));
    }

    [Test]
    public void Draining_generation_that_outlives_the_stop_timeout_gets_SIGKILL_on_its_group()
    {
        StartServing(new SupervisorPolicy { StopTimeout = TimeSpan.FromSeconds(5) });
        On(new ReloadRequested("test"));
        On(new ReadyReported(2, "test"));
        var oldPid = PidOf(1);

        Assert.That(Signals(Advance(TimeSpan.FromSeconds(4.9))), Is.Empty);
        var fx = Advance(TimeSpan.FromSeconds(0.1));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(1, oldPid, Core.Signals.SIGKILL, true)));

        fx = On(new ChildExited(oldPid, ExitStatus.Killed(9)));
        Assert.That(_machine.Generations.Select(g => g.Number), Is.EqualTo(new[] { 2 }));
        Assert.That(fx.OfType<GenerationGone>().Single(), Is.EqualTo(new GenerationGone(1, oldPid)));
    }

    [Test]
    public void New_generation_exiting_before_ready_rolls_back_and_leaves_the_old_one_alone()
    {
        StartServing();
        On(new ReloadRequested("test"));
        var fx = On(new ChildExited(PidOf(2), ExitStatus.Exited(3)));
        Assert.That(Signals(fx), Is.Empty);
        var outcome = fx.OfType<ReloadFinished>().Single().Outcome;
        Assert.That(outcome.Succeeded, Is.False);
        Assert.That(outcome.Message, Does.Contain("exit code 3").And.Contain("generation 1").And.Contain("keeps serving"));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));
        Assert.That(_machine.Phase, Is.EqualTo(SupervisorPhase.Running));
    }

    [Test]
    public void New_generation_killed_by_a_signal_before_ready_rolls_back()
    {
        StartServing();
        On(new ReloadRequested("test"));
        var fx = On(new ChildExited(PidOf(2), ExitStatus.Killed(11, coreDumped: true)));
        Assert.That(fx.OfType<ReloadFinished>().Single().Outcome.Message, Does.Contain("SIGSEGV"));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));
    }

    [Test]
    public void Spawn_failure_on_reload_rolls_back()
    {
        StartServing();
        var fx = _machine.Handle(new ReloadRequested("test"));
        var spawn = fx.OfType<SpawnGeneration>().Single();
        fx = _machine.Handle(new SpawnFailed(spawn.Generation, "No such file or directory"));
        Assert.That(fx.OfType<ReloadFinished>().Single().Outcome.Succeeded, Is.False);
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));
        Assert.That(_machine.Starting, Is.Null);
    }

    [Test]
    public void Ready_timeout_stops_the_new_generation_with_a_hint_and_keeps_the_old()
    {
        StartServing(new SupervisorPolicy { ReadyTimeout = TimeSpan.FromSeconds(10) });
        On(new ReloadRequested("test"));
        var newPid = PidOf(2);
        Assert.That(Signals(Advance(TimeSpan.FromSeconds(9.999))), Is.Empty);

        var fx = Advance(TimeSpan.FromMilliseconds(1));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(2, newPid, Core.Signals.SIGTERM, WholeProcessGroup: true)));
        var logs = string.Join("\n", fx.OfType<Log>().Select(l => l.Message));
        Assert.That(logs, Does.Contain("generation 2 (pid " + newPid + ") sent no READY=1 within 10s").And.Contain("--ready delay:2s"));
        Assert.That(fx.OfType<ReloadFinished>().Single().Outcome.Succeeded, Is.False);
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));

        fx = On(new ChildExited(newPid, ExitStatus.Exited(0)));
        Assert.That(Signals(fx), Is.Empty);
        Assert.That(_machine.Generations.Single().Number, Is.EqualTo(1));
    }

    [Test]
    public void A_failed_reload_names_the_last_status_the_new_generation_reported()
    {
        StartServing(new SupervisorPolicy { ReadyTimeout = TimeSpan.FromSeconds(5) });
        On(new ReloadRequested("test"));
        On(new DrainAnnounced(2, "http (injected)"));
        On(new StatusReported(2, "not ready: health check 'database' is Unhealthy: no connection"));
        Assert.That(_machine.Generations.Single(g => g.Number == 2).Drain, Is.EqualTo("http (injected)"));

        var outcome = Advance(TimeSpan.FromSeconds(5)).OfType<ReloadFinished>().Single().Outcome;
        Assert.That(outcome.Succeeded, Is.False);
        Assert.That(outcome.Message, Does.Contain("sent no READY=1 within 5s (its last status: not ready: health check 'database' is Unhealthy: no connection)")
            .And.Contain("generation 1 (pid"));
    }

    [Test]
    public void A_draining_group_whose_leader_exited_drains_on_until_it_is_empty()
    {
        StartServing(new SupervisorPolicy { StopTimeout = TimeSpan.FromSeconds(10) });
        On(new ReloadRequested("test"));
        var oldPid = PidOf(1);
        var fx = On(new ReadyReported(2, "test"));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(1, oldPid, Core.Signals.SIGTERM, WholeProcessGroup: true)), "the stop signal goes to the whole group");

        // The wrapper (the leader) dies at SIGTERM; its forked server is still finishing requests.
        fx = On(new ChildExited(oldPid, ExitStatus.Killed(Core.Signals.SIGTERM), GroupRemains: true));
        Assert.That(fx.OfType<GenerationGone>(), Is.Empty, "no SIGKILL to the group while it drains");
        Assert.That(_machine.FindByNumber(1)!.State, Is.EqualTo(GenerationState.Draining));

        fx = On(new ProcessGroupEmpty(1));
        Assert.That(fx.OfType<GenerationGone>().Single(), Is.EqualTo(new GenerationGone(1, null)), "the drained group is not killed: its id may be reused");
        Assert.That(_machine.FindByNumber(1), Is.Null);
        Assert.That(string.Join("\n", fx.OfType<Log>().Select(l => l.Message)), Does.Contain("(its whole process group)"));
    }

    [Test]
    public void A_group_still_draining_at_the_stop_deadline_is_killed_and_then_let_go()
    {
        StartServing(new SupervisorPolicy { StopTimeout = TimeSpan.FromSeconds(10) });
        On(new ReloadRequested("test"));
        var oldPid = PidOf(1);
        On(new ReadyReported(2, "test"));
        On(new ChildExited(oldPid, ExitStatus.Exited(0), GroupRemains: true));

        Assert.That(Signals(Advance(TimeSpan.FromSeconds(9.9))), Is.Empty);
        var fx = Advance(TimeSpan.FromSeconds(0.1));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(1, oldPid, Core.Signals.SIGKILL, WholeProcessGroup: true)));
        Assert.That(_machine.FindByNumber(1), Is.Not.Null);

        // Members stuck in the kernel outlive SIGKILL: the generation is let go after a grace period.
        fx = Advance(TimeSpan.FromSeconds(5));
        Assert.That(fx.OfType<GenerationGone>().Single(), Is.EqualTo(new GenerationGone(1, null)));
        Assert.That(_machine.FindByNumber(1), Is.Null);
    }

    [Test]
    public void A_serving_leader_that_dies_takes_its_group_with_it()
    {
        StartServing();
        var pid = PidOf(1);
        var fx = On(new ChildExited(pid, ExitStatus.Exited(70), GroupRemains: true));
        Assert.That(fx.OfType<GenerationGone>().Single(), Is.EqualTo(new GenerationGone(1, pid)), "a crash is not a drain: what is left of the group is ended");
    }

    [Test]
    public void Delay_mode_counts_a_child_alive_after_the_delay_as_ready()
    {
        StartServingInDelayMode();
        On(new ReloadRequested("test"));
        Assert.That(Signals(Advance(TimeSpan.FromMilliseconds(1999))), Is.Empty);
        var fx = Advance(TimeSpan.FromMilliseconds(1));
        Assert.That(Signals(fx).Single().Generation, Is.EqualTo(1));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));
    }

    private void StartServingInDelayMode()
    {
        Create(new SupervisorPolicy { ReadyMode = ReadyMode.Delay, ReadyDelay = TimeSpan.FromSeconds(2) });
        Run(_machine.Start());
        Advance(TimeSpan.FromSeconds(2));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));
    }

    [Test]
    public void Reload_requests_during_a_reload_collapse_into_one_that_follows_it()
    {
        StartServing();
        On(new ReloadRequested("first"));
        var spawned = new List<SupervisorEffect>();
        for (var i = 0; i < 100; i++) spawned.AddRange(On(new ReloadRequested("storm")));
        Assert.That(spawned.OfType<SpawnGeneration>(), Is.Empty, "no second generation while one is starting");
        Assert.That(_machine.ReloadPending, Is.True);

        var fx = On(new ReadyReported(2, "test"));
        Assert.That(fx.OfType<SpawnGeneration>().Single().Generation, Is.EqualTo(3), "one queued reload follows");
        Assert.That(_machine.ReloadPending, Is.False);

        fx = On(new ReadyReported(3, "test"));
        Assert.That(fx.OfType<SpawnGeneration>(), Is.Empty);
        Assert.That(_machine.Serving!.Number, Is.EqualTo(3));
        Assert.That(_machine.Generations.Count(g => g.State == GenerationState.Draining), Is.EqualTo(2), "1 and 2 drain at once");
    }

    [Test]
    public void Queued_reload_still_runs_after_the_reload_before_it_failed()
    {
        StartServing();
        On(new ReloadRequested("first"));
        On(new ReloadRequested("second"));
        var fx = On(new ChildExited(PidOf(2), ExitStatus.Exited(1)));
        Assert.That(fx.OfType<SpawnGeneration>().Single().Generation, Is.EqualTo(3));
    }

    [Test]
    public void Several_generations_drain_at_once_each_on_its_own_deadline()
    {
        StartServing(new SupervisorPolicy { StopTimeout = TimeSpan.FromSeconds(10) });
        On(new ReloadRequested("a"));
        On(new ReadyReported(2, "test"));          // 1 drains from t=0
        Advance(TimeSpan.FromSeconds(4));
        On(new ReloadRequested("b"));
        On(new ReadyReported(3, "test"));          // 2 drains from t=4

        var fx = Advance(TimeSpan.FromSeconds(6)); // t=10: only 1 is due
        Assert.That(Signals(fx).Select(s => s.Generation), Is.EqualTo(new[] { 1 }));
        fx = Advance(TimeSpan.FromSeconds(4));     // t=14: 2 is due
        Assert.That(Signals(fx).Select(s => s.Generation), Is.EqualTo(new[] { 2 }));
    }

    [Test]
    public void Serving_child_that_dies_is_restarted_with_growing_backoff_up_to_a_cap()
    {
        var policy = new SupervisorPolicy
        {
            RestartBackoffInitial = TimeSpan.FromMilliseconds(250),
            RestartBackoffMax = TimeSpan.FromSeconds(2),
        };
        StartServing(policy);
        var delays = new List<TimeSpan?>();
        var generation = 1;
        for (var attempt = 0; attempt < 6; attempt++)
        {
            var pid = PidOf(generation);
            if (_machine.FindByNumber(generation)!.State == GenerationState.Ready)
                On(new ChildExited(pid, ExitStatus.Killed(11)));
            else
                On(new ChildExited(pid, ExitStatus.Exited(1)));
            delays.Add(_machine.RestartAt - _machine.Now);
            Assert.That(_machine.Generations, Is.Empty, "nothing runs during the backoff");
            var fx = Advance(_machine.RestartAt!.Value - _machine.Now);
            generation = fx.OfType<SpawnGeneration>().Single().Generation;
        }
        Assert.That(delays, Is.EqualTo(new TimeSpan?[]
        {
            TimeSpan.FromMilliseconds(250), TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(1),
            TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(2),
        }));
        Assert.That(_machine.Restarts, Is.EqualTo(6));
        Assert.That(_machine.Phase, Is.EqualTo(SupervisorPhase.Running));
    }

    [Test]
    public void A_generation_that_served_long_enough_resets_the_backoff()
    {
        StartServing(new SupervisorPolicy { StableAfter = TimeSpan.FromSeconds(10) });
        On(new ChildExited(PidOf(1), ExitStatus.Exited(1)));
        Advance(TimeSpan.FromMilliseconds(250));
        On(new ReadyReported(2, "test"));
        On(new ChildExited(PidOf(2), ExitStatus.Exited(1)));
        Assert.That(_machine.RestartAt - _machine.Now, Is.EqualTo(TimeSpan.FromMilliseconds(500)), "short-lived: backoff grows");
        Advance(TimeSpan.FromMilliseconds(500));
        On(new ReadyReported(3, "test"));
        Advance(TimeSpan.FromSeconds(11));
        On(new ChildExited(PidOf(3), ExitStatus.Exited(1)));
        Assert.That(_machine.RestartAt - _machine.Now, Is.EqualTo(TimeSpan.FromMilliseconds(250)), "stable: backoff starts over");
    }

    [Test]
    public void Reload_during_the_restart_backoff_starts_at_once()
    {
        StartServing(new SupervisorPolicy { RestartBackoffInitial = TimeSpan.FromSeconds(5) });
        On(new ChildExited(PidOf(1), ExitStatus.Exited(1)));
        var fx = On(new ReloadRequested("SIGUSR2"));
        Assert.That(fx.OfType<SpawnGeneration>().Single().Generation, Is.EqualTo(2));
        Assert.That(_machine.RestartAt, Is.Null);
    }

    [Test]
    public void Serving_child_dying_during_a_reload_lets_the_new_one_take_over()
    {
        StartServing();
        On(new ReloadRequested("test"));
        var fx = On(new ChildExited(PidOf(1), ExitStatus.Killed(9)));
        Assert.That(_machine.RestartAt, Is.Null, "no restart: generation 2 is already starting");
        fx = On(new ReadyReported(2, "test"));
        Assert.That(Signals(fx), Is.Empty);
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));
    }

    [Test]
    public void Without_restart_the_supervisor_exits_with_the_childs_status()
    {
        StartServing(new SupervisorPolicy { Restart = false });
        var fx = On(new ChildExited(PidOf(1), ExitStatus.Killed(6)));
        Assert.That(fx.OfType<ExitSupervisor>().Single().Code, Is.EqualTo(128 + 6));
        Assert.That(_machine.Phase, Is.EqualTo(SupervisorPhase.Exited));
    }

    [Test]
    public void Without_restart_the_others_are_stopped_before_exiting()
    {
        StartServing(new SupervisorPolicy { Restart = false });
        On(new ReloadRequested("test"));
        On(new ReadyReported(2, "test"));
        var fx = On(new ChildExited(PidOf(2), ExitStatus.Exited(4)));
        Assert.That(fx.OfType<ExitSupervisor>(), Is.Empty, "generation 1 is still draining");
        fx = On(new ChildExited(PidOf(1), ExitStatus.Exited(0)));
        Assert.That(fx.OfType<ExitSupervisor>().Single().Code, Is.EqualTo(4));
    }

    [Test]
    public void First_generation_that_never_becomes_ready_ends_the_supervisor_with_its_status()
    {
        Create();
        Run(_machine.Start());
        var fx = On(new ChildExited(1001, ExitStatus.Exited(3)));
        Assert.That(fx.OfType<ExitSupervisor>().Single().Code, Is.EqualTo(3));
    }

    [Test]
    public void First_generation_missing_its_ready_timeout_ends_the_supervisor_with_status_1()
    {
        Create(new SupervisorPolicy { ReadyTimeout = TimeSpan.FromSeconds(1) });
        Run(_machine.Start());
        var fx = Advance(TimeSpan.FromSeconds(1));
        Assert.That(Signals(fx).Single().Signal, Is.EqualTo(Core.Signals.SIGTERM));
        fx = On(new ChildExited(1001, ExitStatus.Killed(15)));
        Assert.That(fx.OfType<ExitSupervisor>().Single().Code, Is.EqualTo(1));
    }

    [Test]
    public void Shutdown_stops_every_generation_and_exits_0_when_all_are_gone()
    {
        StartServing();
        On(new ReloadRequested("test"));
        var fx = On(new ShutdownRequested("SIGTERM", Interrupt: false));
        Assert.That(fx.OfType<ShuttingDown>().Count(), Is.EqualTo(1));
        Assert.That(Signals(fx).Select(s => (s.Generation, s.Signal)), Is.EquivalentTo(new[] { (1, 15), (2, 15) }));
        Assert.That(fx.OfType<ReloadFinished>().Single().Outcome.Succeeded, Is.False, "the reload under way is abandoned");
        Assert.That(On(new ChildExited(PidOf(1), ExitStatus.Exited(0))).OfType<ExitSupervisor>(), Is.Empty);
        Assert.That(On(new ChildExited(PidOf(2), ExitStatus.Exited(0))).OfType<ExitSupervisor>().Single().Code, Is.EqualTo(0));
    }

    [Test]
    public void Second_SIGINT_kills_at_once_but_a_second_SIGTERM_does_not()
    {
        StartServing();
        On(new ShutdownRequested("SIGTERM", Interrupt: false));
        Assert.That(Signals(On(new ShutdownRequested("SIGTERM", Interrupt: false))), Is.Empty);
        var fx = On(new ShutdownRequested("SIGINT", Interrupt: true));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(1, PidOf(1), Core.Signals.SIGKILL, true)));
    }

    [Test]
    public void Reload_while_shutting_down_is_ignored()
    {
        StartServing();
        On(new ShutdownRequested("SIGTERM", Interrupt: false));
        Assert.That(On(new ReloadRequested("SIGUSR2")).OfType<SpawnGeneration>(), Is.Empty);
    }

    [Test]
    public void Ready_from_a_draining_generation_changes_nothing()
    {
        StartServing();
        On(new ReloadRequested("test"));
        On(new ReadyReported(2, "test"));
        var fx = On(new ReadyReported(1, "test"));
        Assert.That(Signals(fx), Is.Empty);
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));
    }

    [Test]
    public void Exit_of_an_unknown_pid_is_only_noted()
    {
        StartServing();
        var fx = On(new ChildExited(4242, ExitStatus.Exited(0)));
        Assert.That(fx.All(e => e is Log { Severity: LogSeverity.Debug }), Is.True);
    }

    private static readonly SupervisorPolicy FiveSecondProbation = new() { Probation = TimeSpan.FromSeconds(5), StopTimeout = TimeSpan.FromSeconds(30) };

    /// <summary>Generation 1 serves; generation 2 was reloaded in and is now on probation beside it.</summary>
    private List<SupervisorEffect> ReloadOntoProbation(SupervisorPolicy? policy = null)
    {
        StartServing(policy ?? FiveSecondProbation);
        On(new ReloadRequested("test"));
        return On(new ReadyReported(2, "test"));
    }

    private static bool StopsGeneration(SupervisorEffect e, int generation) => e is SendSignal s && s.Generation == generation;

    [Test]
    public void Probation_keeps_the_old_generation_serving_beside_the_new_one_and_stops_it_only_when_the_probation_passes()
    {
        var fx = ReloadOntoProbation();
        Assert.That(Signals(fx), Is.Empty, "generation 1 serves on beside 2");
        Assert.That(fx.OfType<ProbationStarted>().Single(), Is.EqualTo(new ProbationStarted(2, TimeSpan.FromSeconds(5), 1)));
        Assert.That(fx.OfType<ReloadFinished>(), Is.Empty, "the reload is not done until the probation is");
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));
        Assert.That(_machine.OnProbation!.Number, Is.EqualTo(2));
        Assert.That(_machine.NextDeadline, Is.EqualTo(TimeSpan.FromSeconds(5)));

        Assert.That(Advance(TimeSpan.FromSeconds(4.999)), Is.Empty);
        fx = Advance(TimeSpan.FromMilliseconds(1));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(1, PidOf(1), Core.Signals.SIGTERM, WholeProcessGroup: true)));
        Assert.That(fx.OfType<ProbationPassed>().Single().Generation, Is.EqualTo(2));
        var outcome = fx.OfType<ReloadFinished>().Single().Outcome;
        Assert.That(outcome.Succeeded, Is.True);
        Assert.That(outcome.Message, Is.EqualTo($"generation 2 (pid {PidOf(2)}) passed its probation of 5s and is serving"));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));
        Assert.That(_machine.OnProbation, Is.Null);
    }

    [Test]
    public void A_generation_that_exits_during_its_probation_is_rolled_back_and_the_old_one_is_never_signalled()
    {
        ReloadOntoProbation();
        var newPid = PidOf(2);
        Advance(TimeSpan.FromSeconds(1));
        var fx = On(new ChildExited(newPid, ExitStatus.Exited(70)));
        Assert.That(Signals(fx), Is.Empty);
        Assert.That(fx.OfType<GenerationGone>().Single(), Is.EqualTo(new GenerationGone(2, newPid)), "what is left of its group is ended");
        var outcome = fx.OfType<ReloadFinished>().Single().Outcome;
        Assert.That(outcome.Succeeded, Is.False);
        Assert.That(outcome.Generation, Is.EqualTo(2));
        Assert.That(outcome.Message, Is.EqualTo($"generation 2 (pid {newPid}) exited with exit code 70 during its probation, 1s after it was ready; " +
            $"rolled back: generation 1 (pid {PidOf(1)}) serves alone"));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));
        Assert.That(_machine.RestartAt, Is.Null, "nothing to restart: generation 1 serves");
        Assert.That(Advance(TimeSpan.FromMinutes(5)), Is.Empty, "generation 1 is left alone");
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));
    }

    [Test]
    public void A_generation_that_reports_failure_during_its_probation_is_drained_and_rolled_back()
    {
        ReloadOntoProbation();
        On(new StatusReported(2, "health check 'db' is Unhealthy"));
        Advance(TimeSpan.FromSeconds(2));
        var fx = On(new FailureReported(2, "handoff socket"));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(2, PidOf(2), Core.Signals.SIGTERM, WholeProcessGroup: true)), "drained as usual");
        var outcome = fx.OfType<ReloadFinished>().Single().Outcome;
        Assert.That(outcome.Succeeded, Is.False);
        Assert.That(outcome.Message, Does.StartWith("generation 2 (pid").And.Contain(
            "reported failure (WATCHDOG=trigger via handoff socket; its status: health check 'db' is Unhealthy) during its probation, 2s after it was ready; rolled back: generation 1"));
        Assert.That(_machine.FindByNumber(2)!.State, Is.EqualTo(GenerationState.Draining));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));
        // Its drain has the usual stop timeout; generation 1 is never touched.
        fx = Advance(TimeSpan.FromSeconds(30));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(2, PidOf(2), Core.Signals.SIGKILL, WholeProcessGroup: true)));
        On(new ChildExited(PidOf(2), ExitStatus.Killed(9)));
        Assert.That(_machine.Generations.Select(g => g.Number), Is.EqualTo(new[] { 1 }));
        Assert.That(On(new FailureReported(2, "handoff socket")), Is.Empty, "a report from a generation that is gone is ignored");
    }

    [Test]
    public void Shutdown_during_a_probation_stops_both_generations_and_abandons_the_reload()
    {
        ReloadOntoProbation();
        var fx = On(new ShutdownRequested("SIGTERM", Interrupt: false));
        Assert.That(Signals(fx).Select(s => s.Generation).Order(), Is.EqualTo(new[] { 1, 2 }));
        var outcome = fx.OfType<ReloadFinished>().Single().Outcome;
        Assert.That(outcome.Succeeded, Is.False);
        Assert.That(outcome.Message, Does.Contain("abandoned during the probation of generation 2"));
        Assert.That(outcome.Abandoned, Is.True);
        Assert.That((_machine.Reloads.Succeeded, _machine.Reloads.Failed), Is.EqualTo((0L, 0L)), "a shutdown is no failed reload");
        On(new ChildExited(PidOf(2), ExitStatus.Exited(0)));
        fx = On(new ChildExited(PidOf(1), ExitStatus.Exited(0)));
        Assert.That(fx.OfType<ExitSupervisor>().Single().Code, Is.EqualTo(0), "a generation on probation that exits on shutdown is no failure");
    }

    [Test]
    public void A_reload_during_a_probation_follows_it_whether_the_probation_passes_or_fails([Values] bool passes)
    {
        ReloadOntoProbation();
        var fx = new List<SupervisorEffect>();
        for (var i = 0; i < 50; i++) fx.AddRange(On(new ReloadRequested($"storm {i}")));
        Assert.That(fx.OfType<SpawnGeneration>(), Is.Empty, "nothing starts beside a generation on probation");
        Assert.That(_machine.ReloadPending, Is.True);

        fx = passes ? Advance(TimeSpan.FromSeconds(5)) : On(new ChildExited(PidOf(2), ExitStatus.Killed(11)));
        Assert.That(fx.OfType<SpawnGeneration>().Single().Generation, Is.EqualTo(3), "the storm collapsed into one reload");
        Assert.That(_machine.ReloadPending, Is.False);
        var serving = passes ? 2 : 1;
        Assert.That(_machine.Serving!.Number, Is.EqualTo(serving));
        fx = On(new ReadyReported(3, "test"));
        Assert.That(fx.OfType<ProbationStarted>().Single(), Is.EqualTo(new ProbationStarted(3, TimeSpan.FromSeconds(5), serving)),
            "the next one is on probation beside whichever serves");
    }

    [Test]
    public void If_the_old_generation_dies_during_the_probation_the_new_one_serves_alone()
    {
        ReloadOntoProbation(FiveSecondProbation with { Restart = false });
        var fx = On(new ChildExited(PidOf(1), ExitStatus.Killed(9)));
        Assert.That(fx.OfType<ProbationPassed>().Single().Generation, Is.EqualTo(2));
        var outcome = fx.OfType<ReloadFinished>().Single().Outcome;
        Assert.That(outcome.Succeeded, Is.True);
        Assert.That(outcome.Message, Does.Contain("probation was cut short: generation 1"));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));
        Assert.That(_machine.Phase, Is.EqualTo(SupervisorPhase.Running), "--no-restart does not end a supervisor whose newcomer serves");
        Assert.That(_machine.RestartAt, Is.Null);
        Assert.That(Advance(TimeSpan.FromSeconds(10)), Is.Empty, "no probation deadline is left");
    }

    [Test]
    public void The_first_generation_and_a_replacement_of_a_crashed_one_have_no_probation()
    {
        StartServing(FiveSecondProbation);
        Assert.That(_machine.Phase, Is.EqualTo(SupervisorPhase.Running), "nothing to fall back to");
        On(new ChildExited(PidOf(1), ExitStatus.Exited(1)));
        Advance(TimeSpan.FromMilliseconds(250));
        var fx = On(new ReadyReported(2, "test"));
        Assert.That(fx.OfType<ProbationStarted>(), Is.Empty);
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));
    }

    [Test]
    public void Failure_reported_outside_a_probation()
    {
        // Before ready: the start failed; generation 1 serves on.
        StartServing(FiveSecondProbation);
        On(new ReloadRequested("test"));
        var fx = On(new FailureReported(2, "NOTIFY_SOCKET"));
        Assert.That(Signals(fx).Single().Generation, Is.EqualTo(2));
        Assert.That(fx.OfType<ReloadFinished>().Single().Outcome.Message, Does.Contain("reported failure (WATCHDOG=trigger via NOTIFY_SOCKET) before it was ready"));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));

        // While serving alone: replaced without a gap, as by a reload; once, however often it reports.
        fx = On(new FailureReported(1, "handoff socket"));
        Assert.That(Signals(fx), Is.Empty);
        Assert.That(fx.OfType<ReloadStarted>().Single(), Is.EqualTo(new ReloadStarted(3, "generation 1 (pid 1001) reported failure")));
        fx = On(new FailureReported(1, "handoff socket"));
        Assert.That(fx.Where(e => e is not Log), Is.Empty);
        Assert.That(_machine.ReloadPending, Is.False, "its replacement is starting already");

        // The old one's report while the new one is on probation changes nothing: the probation decides.
        On(new ReadyReported(3, "test"));
        fx = On(new FailureReported(1, "handoff socket"));
        Assert.That(fx.Where(e => e is not Log), Is.Empty);
        Assert.That(_machine.OnProbation!.Number, Is.EqualTo(3));

        // With --no-restart a serving generation that reports failure serves on.
        StartServing(new SupervisorPolicy { Restart = false });
        fx = On(new FailureReported(1, "handoff socket"));
        Assert.That(fx.Where(e => e is not Log), Is.Empty);
        Assert.That(_machine.Serving!.Number, Is.EqualTo(1));
    }

    [Test]
    public void An_operator_ends_a_probation_early_either_way()
    {
        ReloadOntoProbation();
        Advance(TimeSpan.FromSeconds(1));
        var fx = On(new ProbationEndRequested(true, "gsupervisor promote"));
        Assert.That(Signals(fx).Single(), Is.EqualTo(new SendSignal(1, PidOf(1), Core.Signals.SIGTERM, WholeProcessGroup: true)));
        Assert.That(fx.OfType<ReloadFinished>().Single().Outcome.Message,
            Is.EqualTo($"generation 2 (pid {PidOf(2)}) was promoted by gsupervisor promote after 1s of its probation of 5s and is serving"));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));

        On(new ReloadRequested("test"));
        On(new ReadyReported(3, "test"));
        fx = On(new ProbationEndRequested(false, "gsupervisor rollback"));
        Assert.That(Signals(fx).Single().Generation, Is.EqualTo(3), "the one on probation drains");
        var outcome = fx.OfType<ReloadFinished>().Single().Outcome;
        Assert.That(outcome.Succeeded, Is.False);
        Assert.That(outcome.Message, Does.Contain("was stopped by gsupervisor rollback during its probation").And.Contain("rolled back: generation 2"));
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));
        Assert.That(On(new ProbationEndRequested(true, "gsupervisor promote")).Where(e => e is not Log), Is.Empty, "no probation: nothing to do");
    }

    [Test]
    public void A_probation_crosses_an_upgrade_with_its_end()
    {
        ReloadOntoProbation();
        Advance(TimeSpan.FromSeconds(3));
        CarryAcrossUpgrade();
        Assert.That(_machine.OnProbation!.Number, Is.EqualTo(2));
        Assert.That(Advance(TimeSpan.FromSeconds(1.9)), Is.Empty);
        var fx = Advance(TimeSpan.FromSeconds(0.1));
        Assert.That(Signals(fx).Single().Generation, Is.EqualTo(1));
        Assert.That(fx.OfType<ReloadFinished>().Single().Outcome.Succeeded, Is.True);

        ReloadOntoProbation();
        var snapshot = _machine.Export();
        snapshot.Generations.Single(g => g.State == nameof(GenerationState.Probation)).DeadlineUs = null;
        Assert.That(() => SupervisorStateMachine.Import(_machine.Policy, _clock, snapshot),
            Throws.TypeOf<SnapshotException>().With.Message.Contains("a generation on probation without its end"));
    }

    [Test]
    public void Random_event_sequences_keep_the_invariants([Values(1, 2, 3, 4, 5, 6, 7, 8)] int seed)
    {
        var random = new Random(seed);
        // Odd seeds run with a probation: the newcomer serves beside the old one for 2 s before the old one stops.
        StartServing(new SupervisorPolicy { ReadyTimeout = TimeSpan.FromSeconds(3), StopTimeout = TimeSpan.FromSeconds(2), Probation = TimeSpan.FromSeconds(seed % 2 * 2) });
        _spawnFails = () => random.Next(8) == 0;
        var stopSignals = 0;
        var probations = 0;
        for (var step = 0; step < 2000 && _machine.Phase != SupervisorPhase.Exited; step++)
        {
            var live = _machine.Generations.Where(g => g.Pid is not null).ToList();
            var pick = live.Count > 0 ? live[random.Next(live.Count)] : null;
            var servingBefore = _machine.Serving;
            var onProbationBefore = _machine.OnProbation;
            var fx = random.Next(12) switch
            {
                0 or 1 or 2 => On(new ReloadRequested("random")),
                3 or 4 when pick is not null => On(new ReadyReported(pick.Number, "random")),
                5 when pick is not null => On(new ChildExited(pick.Pid!.Value, ExitStatus.Exited(random.Next(3)), GroupRemains: random.Next(2) == 0)),
                6 when step > 1900 => On(new ShutdownRequested("random", random.Next(2) == 0)),
                7 when _machine.Generations.FirstOrDefault(g => g.LeaderExit is not null) is { } emptied => On(new ProcessGroupEmpty(emptied.Number)),
                8 when pick is not null && random.Next(3) == 0 => On(new FailureReported(pick.Number, "random")),
                9 when random.Next(3) == 0 => On(new ProbationEndRequested(random.Next(2) == 0, "random")),
                _ => Advance(TimeSpan.FromMilliseconds(random.Next(1, 1500))),
            };

            // The protocol's promise: the serving generation gets its stop signal only once its successor is
            // ready (and serving), or when the supervisor shuts down.
            foreach (var stop in fx.OfType<SendSignal>().Where(x => x.Generation == servingBefore?.Number && x.Signal == Core.Signals.SIGTERM))
            {
                stopSignals++;
                Assert.That(_machine.Phase != SupervisorPhase.Running || _machine.Serving is { } next && next.Number > stop.Generation, Is.True,
                    $"step {step}: serving generation {stop.Generation} was stopped with nothing newer serving");
                Assert.That(_machine.Phase != SupervisorPhase.Running || onProbationBefore is null || onProbationBefore.State == GenerationState.Ready, Is.True,
                    $"step {step}: serving generation {stop.Generation} was stopped before its successor passed its probation");
            }
            probations += fx.OfType<ProbationStarted>().Count();
            Assert.That(_machine.Generations.Count(g => g.State is GenerationState.Starting or GenerationState.Probation), Is.LessThanOrEqualTo(1),
                "one newcomer at a time, starting or on probation");
            if (_machine.OnProbation is { } onProbation)
                Assert.That(_machine.Serving, Is.Not.Null, $"step {step}: {onProbation.Label} is on probation with nothing to roll back to");
            Assert.That(_machine.Generations.Count(g => g.State == GenerationState.Ready), Is.LessThanOrEqualTo(1));
            Assert.That(_machine.Generations.Where(g => g.LeaderExit is not null).All(g => g.State == GenerationState.Draining), Is.True,
                "only a draining generation outlives its leader");
            if (_machine.Phase == SupervisorPhase.Running)
                Assert.That(_machine.Serving is not null || _machine.Starting is not null || _machine.RestartAt is not null, Is.True,
                    "while running, something serves, starts, or is about to restart");
        }
        Assert.That(stopSignals, Is.GreaterThan(0), "the sequence stopped serving generations, so the promise was checked");
        if (seed % 2 == 1) Assert.That(probations, Is.GreaterThan(0), "the sequence had probations");
    }
    /// <summary>Exports the machine and imports it into a new one on the same clock: what an in-place upgrade does.</summary>
    private void CarryAcrossUpgrade() =>
        _machine = SupervisorStateMachine.Import(_machine.Policy, _clock, _machine.Export());

    [Test]
    public void A_machine_carried_across_an_upgrade_keeps_its_generations_deadlines_and_history()
    {
        StartServing(new SupervisorPolicy { StopTimeout = TimeSpan.FromSeconds(30) });
        On(new ReloadRequested("test"));
        On(new StatusReported(2, "warming up"));
        On(new DrainAnnounced(2, "http"));
        On(new ReadyReported(2, "test"));
        _clock.Advance(TimeSpan.FromSeconds(10));
        var before = _machine.Export();

        CarryAcrossUpgrade();

        Assert.That(_machine.Export(), Is.EqualTo(before).Using<MachineSnapshot>(SameSnapshot), "nothing lost or changed");
        Assert.That(_machine.Now, Is.EqualTo(TimeSpan.FromSeconds(10)), "uptime goes on");
        Assert.That(_machine.Serving!.Number, Is.EqualTo(2));
        Assert.That(_machine.Serving.Drain, Is.EqualTo("http"));
        Assert.That(_machine.LastReload!.Succeeded, Is.True);
        // Generation 1's drain still ends 30 s after its stop signal, not 30 s after the upgrade.
        Assert.That(Signals(Advance(TimeSpan.FromSeconds(19.9))), Is.Empty);
        Assert.That(Signals(Advance(TimeSpan.FromSeconds(0.1))).Single(), Is.EqualTo(new SendSignal(1, PidOf(1), 9, WholeProcessGroup: true)));
        // And the machine goes on as before: a reload, a ready, a stop.
        On(new ReloadRequested("after the upgrade"));
        Assert.That(_machine.Starting!.Number, Is.EqualTo(3), "generation numbers go on");
    }

    [Test]
    public void A_restart_backoff_and_a_queued_reload_cross_an_upgrade()
    {
        StartServing();
        On(new ChildExited(PidOf(1), ExitStatus.Exited(3)));
        Assert.That(_machine.RestartAt, Is.EqualTo(TimeSpan.FromMilliseconds(250)));
        CarryAcrossUpgrade();
        Assert.That(Advance(TimeSpan.FromMilliseconds(249)).OfType<SpawnGeneration>(), Is.Empty);
        Assert.That(Advance(TimeSpan.FromMilliseconds(1)).OfType<SpawnGeneration>().Single().Generation, Is.EqualTo(2));
        On(new ReloadRequested("one"));
        On(new ReloadRequested("two"));
        Assert.That(_machine.ReloadPending, Is.True);
        CarryAcrossUpgrade();
        Assert.That(_machine.ReloadPending, Is.True);
        Assert.That(_machine.Restarts, Is.EqualTo(1));
        On(new ReadyReported(2, "test"));
        Assert.That(_machine.Starting!.Cause, Is.EqualTo(GenerationCause.Reload), "the queued reload runs");
    }

    [Test]
    public void Reloads_are_counted_and_their_time_to_ready_kept_in_buckets_across_an_upgrade()
    {
        StartServing();
        On(new ReloadRequested("test"));
        _clock.Advance(TimeSpan.FromMilliseconds(300));
        var fx = On(new ReadyReported(2, "test"));
        Assert.That(fx.OfType<ReloadFinished>().Single().Outcome.TookToReady, Is.EqualTo(TimeSpan.FromMilliseconds(300)));
        On(new ReloadRequested("test"));
        On(new ChildExited(PidOf(3), ExitStatus.Exited(1)));
        On(new ReloadRequested("test"));
        _clock.Advance(TimeSpan.FromSeconds(3));
        On(new ReadyReported(4, "test"));

        CarryAcrossUpgrade();
        var reloads = _machine.Reloads;
        Assert.That((reloads.Succeeded, reloads.Failed, reloads.DurationCount), Is.EqualTo((2L, 1L, 2L)));
        Assert.That(reloads.DurationSum, Is.EqualTo(TimeSpan.FromSeconds(3.3)));
        var bucketOf300ms = ReloadStatistics.BucketBounds.ToList().IndexOf(0.5);
        var bucketOf3s = ReloadStatistics.BucketBounds.ToList().IndexOf(5);
        Assert.That(reloads.BucketCounts[bucketOf300ms], Is.EqualTo(1), "0.25 < 0.3 <= 0.5");
        Assert.That(reloads.BucketCounts[bucketOf3s], Is.EqualTo(1), "2.5 < 3 <= 5");
        Assert.That(reloads.BucketCounts.Sum(), Is.EqualTo(2));
    }

    [Test]
    public void A_snapshot_with_values_this_version_does_not_know_is_refused()
    {
        StartServing();
        var snapshot = _machine.Export();
        snapshot.Generations[0].State = "Hibernating";
        Assert.That(() => SupervisorStateMachine.Import(_machine.Policy, _clock, snapshot),
            Throws.TypeOf<SnapshotException>().With.Message.Contains("unknown generation state 'Hibernating'"));
        snapshot = _machine.Export();
        snapshot.Generations.Add(snapshot.Generations[0]);
        Assert.That(() => SupervisorStateMachine.Import(_machine.Policy, _clock, snapshot), Throws.TypeOf<SnapshotException>());
        snapshot = _machine.Export();
        snapshot.Phase = "2";
        Assert.That(() => SupervisorStateMachine.Import(_machine.Policy, _clock, snapshot), Throws.TypeOf<SnapshotException>(), "numbers are not names");
    }

    /// <summary>Field by field: the generations' list is compared item by item (a record compares it by reference).</summary>
    private static bool SameSnapshot(MachineSnapshot a, MachineSnapshot b)
    {
        List<GenerationSnapshot> none = [];
        List<long> noCounts = [];
        return a with { Generations = none, ReloadDurationCounts = noCounts } == b with { Generations = none, ReloadDurationCounts = noCounts } &&
            a.Generations.SequenceEqual(b.Generations) && a.ReloadDurationCounts.SequenceEqual(b.ReloadDurationCounts);
    }
}
