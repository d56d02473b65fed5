// Overview
// --------
// --probation against the installed native binary: after a reload the new generation serves beside the old one
// for D, and the old one is stopped only when the probation passes. A new generation that dies, or reports
// failure (WATCHDOG=trigger: from the test child, or from the injected ASP.NET Core integration when its health
// checks turn Unhealthy), is rolled back: the old one serves on and never hears its stop signal. Under load,
// only requests inside a process that dies may fail; a rollback by failure report drains the new generation and
// fails none.

using System.Diagnostics;
using System.Text.Json;
using GSupervisor.Testing;

namespace GSupervisor.Tests.Integration;

[TestFixture]
public class ProbationTests
{
    private const int SIGKILL = 9;
    private static readonly TimeSpan Long = TimeSpan.FromSeconds(60);

    private static Task<(int Code, string Stdout, string Stderr)> ReloadAndWait(SupervisorProcess supervisor) =>
        Task.Run(() => Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]));

    private static JsonElement Status(SupervisorProcess supervisor) =>
        JsonDocument.Parse(Verb.Run(["status", "--json", "--control", supervisor.ControlPath]).Stdout).RootElement;

    /// <summary>A supervisor on a port of its own, with generation 1 serving.</summary>
    private sealed record Running(SupervisorProcess Supervisor, int Port, int FirstPid) : IDisposable
    {
        public void Dispose() => Supervisor.Dispose();
    }

    private static Running Started(string[] arguments, Dictionary<string, string>? environment = null)
    {
        var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. arguments], environment: environment);
        try
        {
            var port = supervisor.WaitForPort();
            var firstPid = supervisor.WaitForGenerationPid(1);
            supervisor.WaitForReady(1);
            return new Running(supervisor, port, firstPid);
        }
        catch
        {
            supervisor.Dispose();
            throw;
        }
    }

    private static void LoadsGetGoing(KeepAliveLoad keepAlive, NewConnectionLoad newConnections) =>
        Poll.Until(() => keepAlive.Successes > 500 && newConnections.Successes > 100, Long, "the load to get going");

    [Test]
    public void A_generation_that_dies_during_its_probation_is_rolled_back_and_the_old_one_is_never_asked_to_stop()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("args.2"), "--crash-after-ready-ms 1000");
        using var started = Started(["--probation", "5s", "--log-level", "debug",
            "--", Paths.TestChild, "--args-file", dir.File("args")]);
        var (supervisor, port, firstPid) = started;
        const int workers = 4;
        using var load = new NewConnectionLoad(port, workers);
        Poll.Until(() => load.Successes > 50, Long, "the load to get going");

        var reload = ReloadAndWait(supervisor);
        supervisor.WaitForLine(@"generation 2 \(pid \d+\) is ready \(READY=1 via NOTIFY_SOCKET, after [\d.]+m?s\); on probation for 5s, serving beside generation 1 \(pid \d+\)", Long);
        var atProbationStart = load.AnswersByGeneration;

        var (code, stdout, stderr) = reload.Result;
        TestContext.Out.WriteLine($"reload --wait returned {code}: {stdout}{stderr}");
        Assert.That(code, Is.EqualTo(1));
        // "1s after it was ready" (give or take a slow machine), not the 5s of the probation: the rollback came with the exit.
        Assert.That(stdout + stderr, Does.Match($@"generation 2 \(pid \d+\) exited with exit code 70 during its probation, (\d+ms|[1-4](\.\d)?s) after it was ready; rolled back: generation 1 \(pid {firstPid}\) serves alone"));
        Assert.That(stdout + stderr, Does.Contain("TestChild: crashing after ready, as asked"), "the new child's last output");
        var duringProbation = load.AnswersByGeneration;
        Assert.That(duringProbation.GetValueOrDefault("2"), Is.GreaterThan(0), "generation 2 served during its probation");
        Assert.That(duringProbation["1"], Is.GreaterThan(atProbationStart["1"]), "and generation 1 served beside it");

        var before = load.Successes;
        Poll.Until(() => load.Successes > before + 100, Long, "requests after the rollback");
        load.Stop();
        TestContext.Out.WriteLine($"new connections: {load.Successes} requests, {load.Failures.Count} failed across the rollback: {string.Join("; ", load.Failures.Distinct())}");
        Assert.That(load.Failures.Count, Is.LessThanOrEqualTo(workers), "only requests in flight inside the dying process may fail");
        Assert.That(Native.IsAlive(firstPid), Is.True);
        Assert.That(Http.Get(port), Does.EndWith("gen=1"));
        Assert.That(supervisor.Output, Does.Not.Contain($"TestChild pid {firstPid}: got SIGTERM").And.Not.Contain($"to process group {firstPid}"),
            "generation 1 was never sent its stop signal");
        Assert.That(Status(supervisor).GetProperty("probation").ValueKind, Is.EqualTo(JsonValueKind.Null));
    }

    [Test]
    public void A_probation_that_passes_stops_the_old_generation_then_and_a_reload_during_it_follows_it()
    {
        using var started = Started(["--probation", "4s", "--", Paths.StockWebApp]);
        var (supervisor, port, firstPid) = started;
        using var keepAlive = new KeepAliveLoad(port, connections: 50);
        using var newConnections = new NewConnectionLoad(port, workers: 4);
        LoadsGetGoing(keepAlive, newConnections);

        var clock = Stopwatch.StartNew();
        var reload = ReloadAndWait(supervisor);
        supervisor.WaitForLine(@"generation 2 \(pid \d+\) is ready .*; on probation for 4s", Long);
        Assert.That(Native.IsAlive(firstPid), Is.True);
        var queued = Verb.Run(["reload", "--control", supervisor.ControlPath]);
        Assert.That(queued.Stdout, Does.Contain("reload queued behind the probation of generation 2 (generation 3)"));

        var (code, stdout, stderr) = reload.Result;
        var took = clock.Elapsed;
        Assert.That(code, Is.EqualTo(0), stdout + stderr);
        Assert.That(stdout, Does.Match(@"reload succeeded: generation 2 \(pid \d+\) passed its probation of 4s and is serving"));
        Assert.That(took, Is.GreaterThanOrEqualTo(TimeSpan.FromSeconds(4)), "--wait returns when the probation ends");
        supervisor.WaitForLine($@"generation 1 \(pid {firstPid}\) exited", Long);
        supervisor.WaitForLine(@"generation 3 \(pid \d+\) is ready .*; on probation for 4s, serving beside generation 2", Long);
        supervisor.WaitForLine(@"reload succeeded: generation 3 \(pid \d+\) passed its probation", Long);
        Http.UntilGeneration(() => Http.Get(port), 3);

        keepAlive.Stop();
        newConnections.Stop();
        TestContext.Out.WriteLine($"two reloads with a 4s probation each: keep-alive {keepAlive.Successes} requests on {keepAlive.ConnectionsOpened} connections, " +
            $"{keepAlive.Failures.Count} failed; new connections {newConnections.Successes} requests, {newConnections.Failures.Count} failed");
        Assert.That(keepAlive.Failures, Is.Empty);
        Assert.That(newConnections.Failures, Is.Empty);
    }

    [Test]
    public void A_web_app_whose_health_turns_Unhealthy_during_its_probation_is_rolled_back_without_a_failed_request()
    {
        using var dir = new TempDirectory();
        var health = dir.File("health");
        File.WriteAllText(health, "healthy");
        using var started = Started(["--probation", "20s", "--log-level", "debug", "--", Paths.StockWebApp],
            environment: new Dictionary<string, string> { ["HEALTH_FILE"] = health, ["GSupervisor__HealthCheckInterval"] = "00:00:00.200" });
        var (supervisor, port, firstPid) = started;
        using var keepAlive = new KeepAliveLoad(port, connections: 50);
        using var newConnections = new NewConnectionLoad(port, workers: 4);
        LoadsGetGoing(keepAlive, newConnections);

        var reload = ReloadAndWait(supervisor);
        supervisor.WaitForLine(@"generation 2 \(pid \d+\) is ready .*; on probation for 20s", Long);
        supervisor.WaitForLine(@"On probation for [\d:.]+: health checks run every 00:00:00.2000000", Long);
        // Connections opened now are shared by both generations: generation 2's must drain, not fail.
        using var keepAliveDuring = new KeepAliveLoad(port, connections: 50);
        var answered = newConnections.AnswersByGeneration.GetValueOrDefault("2");
        Poll.Until(() => keepAliveDuring.Successes > 500 && newConnections.AnswersByGeneration.GetValueOrDefault("2") > answered + 20, Long,
            "generation 2 to answer during its probation");
        var clock = Stopwatch.StartNew();
        File.WriteAllText(health, "unhealthy"); // generation 1 is not on probation: it does not act on its checks

        var (code, stdout, stderr) = reload.Result;
        TestContext.Out.WriteLine($"rolled back {clock.Elapsed.TotalSeconds:0.00}s after the health check turned: {stdout}{stderr}");
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stdout + stderr, Does.Contain("reported failure (WATCHDOG=trigger via handoff socket; its status: failed its probation: " +
            "health check 'database' is Unhealthy: no connection to db.internal:5432) during its probation")
            .And.Contain($"rolled back: generation 1 (pid {firstPid}) serves alone"));
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(15)), "rolled back at the report, not at the probation's end");
        supervisor.WaitForLine(@"generation 2 \(pid \d+\) exited with exit code 0 \S+ after it was asked to stop", Long);
        Http.UntilGeneration(() => Http.Get(port), 1);
        File.WriteAllText(health, "healthy");

        var before = keepAliveDuring.Successes;
        Poll.Until(() => keepAliveDuring.Successes > before + 500, Long, "requests after the rollback");
        keepAlive.Stop();
        keepAliveDuring.Stop();
        newConnections.Stop();
        TestContext.Out.WriteLine($"rollback by failure report: keep-alive {keepAlive.Successes} requests on {keepAlive.ConnectionsOpened} connections opened before the reload, " +
            $"{keepAlive.Failures.Count} failed; {keepAliveDuring.Successes} on {keepAliveDuring.ConnectionsOpened} opened during the probation, {keepAliveDuring.Failures.Count} failed; " +
            $"new connections {newConnections.Successes} requests, {newConnections.Failures.Count} failed");
        Assert.That(keepAlive.Failures, Is.Empty);
        Assert.That(keepAliveDuring.Failures, Is.Empty, "generation 2 drained");
        Assert.That(newConnections.Failures, Is.Empty);
        Assert.That(Native.IsAlive(firstPid), Is.True);
        Assert.That(supervisor.Output, Does.Not.Contain($"to process group {firstPid}"), "generation 1 was never sent its stop signal");
        Assert.That(Status(supervisor).GetProperty("serving").GetProperty("pid").GetInt32(), Is.EqualTo(firstPid));
    }

    [Test]
    public void A_crash_during_the_probation_fails_only_requests_inside_the_crashed_process()
    {
        const int connections = 50, workers = 8;
        using var started = Started(["--probation", "60s", "--", Paths.StockWebApp]);
        var (supervisor, port, firstPid) = started;
        // Connections opened before the reload are all generation 1's; those opened during the probation are shared
        // by both generations through the common accept queue.
        using var keepAliveBefore = new KeepAliveLoad(port, connections);
        using var newConnections = new NewConnectionLoad(port, workers);
        LoadsGetGoing(keepAliveBefore, newConnections);

        var reload = ReloadAndWait(supervisor);
        var newPid = int.Parse(supervisor.WaitForLine(@"generation 2 \(pid (\d+)\) is ready .*; on probation for 1m", Long).Groups[1].Value);
        using var keepAliveDuring = new KeepAliveLoad(port, connections);
        var answered = newConnections.AnswersByGeneration.GetValueOrDefault("2");
        Poll.Until(() => newConnections.AnswersByGeneration.GetValueOrDefault("2") > answered + 50 && keepAliveDuring.Successes > 1000, Long,
            "generation 2 to take its share of the load");
        Assert.That(Status(supervisor).GetProperty("probation").GetProperty("pid").GetInt32(), Is.EqualTo(newPid), "still on probation");
        Assert.That(Native.Kill(newPid, SIGKILL), Is.EqualTo(0));

        var (code, stdout, stderr) = reload.Result;
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stdout + stderr, Does.Contain($"generation 2 (pid {newPid}) exited with signal SIGKILL during its probation").And.Contain($"generation 1 (pid {firstPid}) serves alone"));
        var before = keepAliveDuring.Successes;
        Poll.Until(() => keepAliveDuring.Successes > before + 500, Long, "requests after the rollback");
        var loads = new (string Name, LoadBase Load)[] { ("keep-alive, opened before", keepAliveBefore), ("keep-alive, opened during the probation", keepAliveDuring), ("new connections", newConnections) };
        foreach (var (name, load) in loads)
        {
            load.Stop();
            var opened = load is KeepAliveLoad k ? $" on {k.ConnectionsOpened} connections" : "";
            TestContext.Out.WriteLine($"rollback by SIGKILL of the new generation, {name}: {load.Successes} requests{opened}, {load.Failures.Count} failed ({string.Join("; ", load.Failures.Distinct())})");
        }
        Assert.That(keepAliveBefore.Failures, Is.Empty, "generation 1's connections are untouched");
        // A request fails only if the killed process held it: at most one per connection it held, one per worker.
        Assert.That(keepAliveDuring.Failures.Count, Is.LessThanOrEqualTo(connections));
        Assert.That(newConnections.Failures.Count, Is.LessThanOrEqualTo(workers));
        Assert.That(Native.IsAlive(firstPid), Is.True);
        Assert.That(Http.Get(port), Does.StartWith($"pid={firstPid} "));
    }

    [Test]
    public void Promote_and_rollback_end_a_probation_now()
    {
        using var started = Started(["--probation", "10m", "--", Paths.TestChild]);
        var (supervisor, port, firstPid) = started;
        var none = Verb.Run(["promote", "--control", supervisor.ControlPath]);
        Assert.That(none.Code, Is.EqualTo(1));
        Assert.That(none.Stderr, Does.Contain("no generation is on probation"));

        var reload = ReloadAndWait(supervisor);
        supervisor.WaitForLine(@"generation 2 \(pid \d+\) is ready .*; on probation for 10m", Long);
        var status = Status(supervisor);
        Assert.That(status.GetProperty("probation").GetProperty("generation").GetInt32(), Is.EqualTo(2));
        Assert.That(status.GetProperty("probation").GetProperty("secondsLeft").GetDouble(), Is.InRange(500, 600));
        Assert.That(status.GetProperty("probation").GetProperty("lengthSeconds").GetDouble(), Is.EqualTo(600));
        Assert.That(status.GetProperty("serving").GetProperty("pid").GetInt32(), Is.EqualTo(firstPid), "generation 1 still serves");
        Assert.That(status.GetProperty("generations")[1].GetProperty("state").GetString(), Is.EqualTo("probation"));
        Assert.That(Verb.Run(["status", "--control", supervisor.ControlPath]).Stdout,
            Does.Match(@"probation: generation 2 \(pid \d+\) serves beside it, \d+m\d*s? left of 10m; it replaces generation 1 then"));
        var promoted = Verb.Run(["promote", "--control", supervisor.ControlPath]);
        Assert.That(promoted.Code, Is.EqualTo(0), promoted.Stderr);
        Assert.That(promoted.Stdout, Does.Match(@"generation 2 \(pid \d+\) was promoted by gsupervisor promote after [\d.]+m?s of its probation of 10m and is serving"));
        Assert.That(reload.Result.Code, Is.EqualTo(0));
        supervisor.WaitForLine($@"generation 1 \(pid {firstPid}\) exited", Long);

        var secondPid = supervisor.WaitForGenerationPid(2);
        reload = ReloadAndWait(supervisor);
        supervisor.WaitForLine(@"generation 3 \(pid \d+\) is ready .*; on probation for 10m", Long);
        var rolledBack = Verb.Run(["rollback", "--control", supervisor.ControlPath]);
        Assert.That(rolledBack.Code, Is.EqualTo(0), rolledBack.Stderr);
        Assert.That(rolledBack.Stdout, Does.Contain($"was stopped by gsupervisor rollback during its probation").And.Contain($"rolled back: generation 2 (pid {secondPid}) serves alone"));
        var (code, _, stderr) = reload.Result;
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain("was stopped by gsupervisor rollback"));
        supervisor.WaitForLine(@"generation 3 \(pid \d+\) exited with exit code 0", Long);
        Assert.That(Http.Get(port), Does.EndWith("gen=2"));
    }

    [Test]
    public void A_probation_crosses_an_upgrade_of_the_supervisor()
    {
        using var started = Started(["--probation", "8s", "--", Paths.TestChild]);
        var (supervisor, port, firstPid) = started;
        var reload = ReloadAndWait(supervisor);
        supervisor.WaitForLine(@"generation 2 \(pid \d+\) is ready .*; on probation for 8s", Long);
        var leftBefore = Status(supervisor).GetProperty("probation").GetProperty("secondsLeft").GetDouble();

        var upgrade = Verb.Run(["upgrade", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(upgrade.Code, Is.EqualTo(0), upgrade.Stdout + upgrade.Stderr);
        var status = Status(supervisor);
        Assert.That(status.GetProperty("upgrades").GetInt32(), Is.EqualTo(1));
        Assert.That(status.GetProperty("probation").GetProperty("generation").GetInt32(), Is.EqualTo(2), "the probation goes on in the new image");
        Assert.That(status.GetProperty("probation").GetProperty("secondsLeft").GetDouble(), Is.LessThan(leftBefore), "with its deadline, not a new one");
        Assert.That(Native.IsAlive(firstPid), Is.True);

        var (code, stdout, stderr) = reload.Result;
        Assert.That(code, Is.EqualTo(0), stdout + stderr);
        Assert.That(stdout, Does.Contain("passed its probation of 8s"), "the waiting reload --wait crossed the upgrade and was answered at the probation's end");
        supervisor.WaitForLine($@"generation 1 \(pid {firstPid}\) exited", Long);
        Http.UntilGeneration(() => Http.Get(port), 2);
    }
}
