using System.Text.Json;

namespace GSupervisor.Tests.Integration;

/// <summary>
/// gsupervisor's startup hook against apps that reference nothing of gsupervisor (tests/StockWebApp,
/// tests/StockConsoleApp, examples/SystemdKestrel), run by the installed native binary: a stock ASP.NET Core
/// app drains through reloads with zero failed requests, a console app is left as it is, and a generation whose
/// health checks fail is never made the serving one.
/// </summary>
[TestFixture]
public class InjectionTests
{
    [Test]
    public void Unmodified_web_app_serves_keep_alive_clients_through_reloads_without_one_failed_request()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.StockWebApp],
            environment: new Dictionary<string, string> { ["ASPNETCORE_URLS"] = "http://127.0.0.1:1" });
        var port = supervisor.WaitForPort();
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) is ready \(READY=1 via handoff socket", TimeSpan.FromSeconds(60));
        supervisor.WaitForLine(@"Generation 1 listens on the 1 socket\(s\) gsupervisor handed over .*set up by gsupervisor's startup hook");

        var status = JsonDocument.Parse(Verb.Run(["status", "--json", "--control", supervisor.ControlPath]).Stdout).RootElement;
        Assert.That(status.GetProperty("generations")[0].GetProperty("drain").GetString(), Is.EqualTo("http (injected)"));

        using var load = new KeepAliveLoad(port, connections: 50);
        Reloads.UnderLoad(supervisor, load, 8, "stock web app, keep-alive");
        Assert.That(load.Failures, Is.Empty);
    }

    [Test]
    public void Unmodified_web_app_serves_new_connection_clients_through_reloads_without_one_failed_request()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.StockWebApp]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        using var load = new NewConnectionLoad(port, workers: 8);
        Reloads.UnderLoad(supervisor, load, 5, "stock web app, new connection per request", warmUp: 200);
        Assert.That(load.Failures, Is.Empty);
        Assert.That(load.GenerationsSeen, Does.Contain("6"));
    }

    [Test]
    public void Stock_app_that_calls_UseSystemd_gets_the_sockets_once_and_drains()
    {
        // Kestrel's UseSystemd() would adopt fd 3 as well; the hook took the sockets and removed LISTEN_FDS first,
        // so Kestrel binds each socket once and gsupervisor's READY=1 and drain come with it.
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.SystemdKestrel]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) is ready \(READY=1 via handoff socket", TimeSpan.FromSeconds(60));
        using var load = new KeepAliveLoad(port, connections: 50);
        Reloads.UnderLoad(supervisor, load, 5, "SystemdKestrel injected, keep-alive");
        Assert.That(load.Failures, Is.Empty);
        Assert.That(supervisor.Output, Does.Not.Contain("address already in use").IgnoreCase);
    }

    [Test]
    public void Without_any_listen_a_web_app_still_reports_ready_and_drains()
    {
        // It binds its own URL (port 0 here, so two generations can overlap); READY=1 and the drain still come.
        using var supervisor = SupervisorProcess.Start(["--ready-timeout", "30s", "--", Paths.StockWebApp],
            environment: new Dictionary<string, string> { ["ASPNETCORE_URLS"] = "http://127.0.0.1:0" });
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) is ready \(READY=1 via handoff socket", TimeSpan.FromSeconds(60));
        supervisor.WaitForLine(@"gsupervisor handed over no sockets \(no --listen\), so the app listens on its own URLs");
        Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]).Code, Is.EqualTo(0));
        supervisor.WaitForLine("draining for 00:00:02");
    }

    [Test]
    public void Console_app_is_left_as_it_is()
    {
        var injected = RunConsoleApp([]);
        var plain = RunConsoleApp(["--no-inject"]);
        Assert.That(injected.Code, Is.EqualTo(3), "the child's exit status is the supervisor's (--no-restart)");
        Assert.That(injected.Output, Is.EqualTo(plain.Output), "the same output, with or without the hook");
        Assert.That(injected.Output, Does.Contain("LISTEN_FDS=1").And.Contain("DOTNET_STARTUP_HOOKS=(unset)")
            .And.Contain("ASPNETCORE_HOSTINGSTARTUPASSEMBLIES=(unset)").And.Contain("fd 3: socket\n")
            .And.Contain("loaded: no GSupervisor assembly").And.Contain("console app done"));
        Assert.That(injected.Log, Has.None.Contains("startup hook"));
    }

    private static (int Code, string Output, IReadOnlyList<string> Log) RunConsoleApp(string[] options)
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--no-restart", "--ready", "delay:10s", .. options, "--", Paths.StockConsoleApp]);
        var code = supervisor.WaitForExit(TimeSpan.FromSeconds(60));
        // The child's lines, not the supervisor's own (which carry a timestamp and a level); sorted, as its stdout
        // and stderr are relayed side by side.
        var childLines = supervisor.Lines.Where(l => !System.Text.RegularExpressions.Regex.IsMatch(l, @"^\d{4}-\d\d-\d\d ")).Order(StringComparer.Ordinal);
        return (code, string.Join("\n", childLines) + "\n", supervisor.Lines);
    }

    [Test]
    public void Hooks_the_user_set_are_kept_and_no_inject_sets_none()
    {
        var withHook = EnvironmentOfChild([], new Dictionary<string, string> { ["DOTNET_STARTUP_HOOKS"] = "/opt/own/Hook.dll" });
        Assert.That(withHook["DOTNET_STARTUP_HOOKS"], Is.EqualTo("/opt/own/Hook.dll:" + Paths.Installed("usr/lib/gsupervisor/dotnet/GSupervisor.StartupHook.dll")));
        var without = EnvironmentOfChild(["--no-inject"], new Dictionary<string, string> { ["DOTNET_STARTUP_HOOKS"] = "/opt/own/Hook.dll" });
        Assert.That(without["DOTNET_STARTUP_HOOKS"], Is.EqualTo("/opt/own/Hook.dll"));
        Assert.That(EnvironmentOfChild(["--no-inject"], new Dictionary<string, string>()).ContainsKey("DOTNET_STARTUP_HOOKS"), Is.False);
    }

    private static Dictionary<string, string> EnvironmentOfChild(string[] options, Dictionary<string, string> environment)
    {
        using var supervisor = SupervisorProcess.Start(["--no-restart", "--ready", "delay:10s", .. options, "--", "/bin/sh", "-c", "env; exit 7"], environment: environment);
        Assert.That(supervisor.WaitForExit(TimeSpan.FromSeconds(30)), Is.EqualTo(7), "the child's status");
        return supervisor.Lines.Select(l => l.Split('=', 2)).Where(p => p.Length == 2 && System.Text.RegularExpressions.Regex.IsMatch(p[0], "^[A-Z_][A-Z0-9_]*$"))
            .GroupBy(p => p[0]).ToDictionary(g => g.Key, g => g.Last()[1]);
    }

    [Test]
    public void Generation_whose_health_checks_fail_is_never_ready_and_the_old_one_keeps_serving()
    {
        using var dir = new TempDirectory();
        var health = dir.File("health");
        File.WriteAllText(health, "degraded");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--ready-timeout", "4s", "--", Paths.StockWebApp],
            environment: new Dictionary<string, string> { ["HEALTH_FILE"] = health, ["GSupervisor__HealthCheckInterval"] = "00:00:00.200" });
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        var status = Verb.Run(["status", "--control", supervisor.ControlPath]).Stdout;
        Assert.That(status, Does.Contain("degraded: health check 'database' is Degraded: replica lag 40s"), "Degraded counts as ready, and says so");

        File.WriteAllText(health, "unhealthy");
        var (code, stdout, stderr) = Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stdout + stderr, Does.Contain("generation 2").And.Contain("health check 'database' is Unhealthy: no connection to db.internal:5432")
            .And.Contain("generation 1 (pid"));
        Assert.That(Http.Get(port), Does.EndWith("gen=1"), "generation 1 still serves");

        File.WriteAllText(health, "healthy");
        (code, stdout, stderr) = Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0), stdout + stderr);
        Http.UntilGeneration(() => Http.Get(port), 3);
    }
}
