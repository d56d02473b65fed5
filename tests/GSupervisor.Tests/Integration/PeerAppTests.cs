// Overview
// --------
// Drop-in for apps written for Server::Starter or einhorn: children also get SERVER_STARTER_PORT /
// SERVER_STARTER_GENERATION and EINHORN_FD_COUNT / EINHORN_FD_N, so such an app runs under gsupervisor unchanged
// (with --ready delay:D, as it sends no readiness). tests/peer-apps/app.py reads only its own supervisor's
// variables and drains as those apps do; it reloads under keep-alive and new-connection load without a failure.

using GSupervisor.Testing;

namespace GSupervisor.Tests.Integration;

[TestFixture]
public class PeerAppTests
{
    private static string App => Path.Combine(Paths.Root, "tests/peer-apps/app.py");

    [Test]
    public void Children_get_the_sockets_described_as_Server_Starter_and_einhorn_do()
    {
        using var dir = new TempDirectory();
        var unixPath = dir.File("app.sock");
        using var supervisor = SupervisorProcess.Start(
            ["--listen", ":0", "--listen", "127.0.0.1:0", "--listen", "unix:" + unixPath, "--no-restart", "--ready", "delay:10s",
                "--", "/bin/sh", "-c", "env; exit 7"],
            environment: new Dictionary<string, string> { ["EINHORN_FD_5"] = "9", ["EINHORN_MASTER_PID"] = "1", ["SERVER_STARTER_PORT"] = "80=9" });
        var anyPort = int.Parse(supervisor.WaitForLine(@"listening on (?:\[::\]|0\.0\.0\.0):(\d+)").Groups[1].Value); // 0.0.0.0 where IPv6 is off
        var loopbackPort = int.Parse(supervisor.WaitForLine(@"listening on 127\.0\.0\.1:(\d+)").Groups[1].Value);
        Assert.That(supervisor.WaitForExit(TimeSpan.FromSeconds(30)), Is.EqualTo(7));
        var environment = supervisor.Lines.Select(l => l.Split('=', 2)).Where(p => p.Length == 2)
            .GroupBy(p => p[0]).ToDictionary(g => g.Key, g => g.Last()[1]);

        Assert.That(environment["SERVER_STARTER_PORT"], Is.EqualTo($"{anyPort}=3;127.0.0.1:{loopbackPort}=4;{unixPath}=5"),
            "start_server's form: a bare port for all interfaces, HOST:PORT, a path; the supervisor's own value is not passed on");
        Assert.That(environment["SERVER_STARTER_GENERATION"], Is.EqualTo("1"));
        Assert.That(environment["EINHORN_FD_COUNT"], Is.EqualTo("3"));
        Assert.That((environment["EINHORN_FD_0"], environment["EINHORN_FD_1"], environment["EINHORN_FD_2"]), Is.EqualTo(("3", "4", "5")));
        Assert.That(environment["EINHORN_FDS"], Is.EqualTo("3 4 5"), "einhorn's older form");
        Assert.That(environment.Keys.Where(k => k is "EINHORN_FD_5" or "EINHORN_MASTER_PID"), Is.Empty, "einhorn variables of the supervisor's own environment are not passed on");
    }

    [TestCase("server-starter")]
    [TestCase("einhorn")]
    public void An_app_written_for_the_peer_reloads_without_a_failed_request(string peer)
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--ready", "delay:1s", "--", App, peer]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForLine($@"{peer} app pid \d+ serving on", TimeSpan.FromSeconds(30));
        supervisor.WaitForReady(1);
        using var keepAlive = new KeepAliveLoad(port, connections: 20);
        using var newConnections = new NewConnectionLoad(port, workers: 4);
        Reloads.UnderLoad(supervisor, keepAlive, 3, $"{peer} app, keep-alive (with new-connection load beside it)", warmUp: 200);
        newConnections.Stop();
        TestContext.Out.WriteLine($"{peer} app, new connection per request: {newConnections.Successes} requests, {newConnections.Failures.Count} failed: {string.Join("; ", newConnections.Failures.Distinct())}");
        Assert.That(keepAlive.Failures, Is.Empty);
        Assert.That(newConnections.Failures, Is.Empty);
        Assert.That(newConnections.Successes, Is.GreaterThan(0));
    }
}
