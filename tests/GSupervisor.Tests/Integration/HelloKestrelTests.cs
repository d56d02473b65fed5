namespace GSupervisor.Tests.Integration;

/// <summary>
/// examples/HelloKestrel (one line: UseGSupervisor()) under gsupervisor, reloaded under load from clients
/// that never retry. The promise: not one failed request, for keep-alive clients too.
/// </summary>
[TestFixture]
public class HelloKestrelTests
{
    private const int SIGUSR2 = 12;

    private static void ReloadRepeatedly(SupervisorProcess supervisor, int reloads, Func<long> successes)
    {
        for (var generation = 2; generation <= reloads + 1; generation++)
        {
            var oldPid = int.Parse(supervisor.WaitForLine($@"generation {generation - 1} \(pid (\d+)\) started").Groups[1].Value);
            var before = successes();
            supervisor.Signal(SIGUSR2);
            supervisor.WaitForLine($@"reload succeeded: generation {generation} \(pid \d+\) is serving", TimeSpan.FromSeconds(60));
            supervisor.WaitForLine($@"generation {generation - 1} \(pid {oldPid}\) exited", TimeSpan.FromSeconds(60));
            Assert.That(Native.IsAlive(oldPid), Is.False, $"generation {generation - 1} is gone");
            Poll.Until(() => successes() > before + 50, TimeSpan.FromSeconds(60), $"requests after reload {generation - 1}");
        }
    }

    [Test]
    public void Serves_on_every_handed_listener_tcp_and_unix_and_not_on_its_own_urls()
    {
        using var dir = new TempDirectory();
        var unixPath = dir.File("hello.sock");
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "web=127.0.0.1:0", "--listen", $"local=unix:{unixPath}", "--", Paths.HelloKestrel],
            environment: new Dictionary<string, string> { ["ASPNETCORE_URLS"] = "http://127.0.0.1:1" });
        var port = supervisor.WaitForPort();
        var pid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        Assert.That(Http.Get(port), Is.EqualTo($"pid={pid} gen=1"));
        using var unix = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        unix.Connect(new System.Net.Sockets.UnixDomainSocketEndPoint(unixPath));
        unix.Send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"u8.ToArray());
        var buffer = new byte[1024];
        var response = new System.Text.StringBuilder();
        int n;
        while ((n = unix.Receive(buffer)) > 0) response.Append(System.Text.Encoding.ASCII.GetString(buffer, 0, n));
        var text = response.ToString();
        Assert.That(text, Does.StartWith("HTTP/1.1 200").And.EndWith($"pid={pid} gen=1\n"));
    }

    [Test]
    public void Unmodified_systemd_Kestrel_app_serves_through_reloads_losing_only_what_stock_Kestrel_drops()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--ready", "delay:1500ms", "--", Paths.SystemdKestrel]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        using var load = new NewConnectionLoad(port, workers: 8);
        Poll.Until(() => load.Successes > 100, TimeSpan.FromSeconds(60), "the load to get going");
        ReloadRepeatedly(supervisor, 10, () => load.Successes);
        load.Stop();
        TestContext.Out.WriteLine($"SystemdKestrel, new connection per request: 10 reloads, {load.Successes} requests, {load.Failures.Count} failed: {string.Join("; ", load.Failures.Distinct())}");
        // Without the client library the supervisor cannot prevent it: a stock Kestrel stop closes connections
        // it accepted but had not read yet (measured 0 to 5 of ~90,000 requests over 10 reloads). Nothing
        // else may fail: no refused or reset connection, no error status.
        Assert.That(load.Failures.Distinct(), Is.SubsetOf(new[] { "empty response (connection closed unanswered)" }));
        Assert.That(load.Failures.Count, Is.LessThanOrEqualTo(load.Successes / 1000), "at most 0.1% of requests");
        Assert.That(load.GenerationsSeen, Does.Contain("11"));
    }

    private static SupervisorProcess StartHello(out int port)
    {
        var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.HelloKestrel]);
        port = supervisor.WaitForPort();
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) is ready \(READY=1 via handoff socket", TimeSpan.FromSeconds(60));
        return supervisor;
    }

    [Test]
    public void Keep_alive_clients_see_no_failed_request_across_ten_reloads()
    {
        using var supervisor = StartHello(out var port);
        using var load = new KeepAliveLoad(port, connections: 50);
        Poll.Until(() => load.Successes > 500, TimeSpan.FromSeconds(60), "the load to get going");
        ReloadRepeatedly(supervisor, 10, () => load.Successes);
        load.Stop();
        TestContext.Out.WriteLine($"keep-alive: 10 reloads, {load.Successes} requests on {load.ConnectionsOpened} connections, {load.Failures.Count} failed");
        Assert.That(load.Failures, Is.Empty);
    }

    [Test]
    public void New_connection_clients_see_no_failed_request_across_ten_reloads()
    {
        using var supervisor = StartHello(out var port);
        using var load = new NewConnectionLoad(port, workers: 8);
        Poll.Until(() => load.Successes > 100, TimeSpan.FromSeconds(60), "the load to get going");
        ReloadRepeatedly(supervisor, 10, () => load.Successes);
        load.Stop();
        TestContext.Out.WriteLine($"new connection per request: 10 reloads, {load.Successes} requests, {load.Failures.Count} failed");
        Assert.That(load.Failures, Is.Empty);
        Assert.That(load.GenerationsSeen, Does.Contain("11"));
    }
}
