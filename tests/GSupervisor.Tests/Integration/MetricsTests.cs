// Overview
// --------
// --metrics against the native binary, read by a real Prometheus parser (Debian's python3-prometheus-client):
// exact counts after known reloads, a failed one, a crash restart and an in-place upgrade; the endpoint is the
// supervisor's own (no child gets its fd); and anything but GET /metrics is refused.

using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

namespace GSupervisor.Tests.Integration;

[TestFixture]
public class MetricsTests
{
    private const int SIGKILL = 9;

    /// <summary>Scrapes <paramref name="url"/> and parses it with prometheus_client: "name {labels} value" per sample.</summary>
    private static Dictionary<string, double> Scrape(string url)
    {
        const string parse = """
            import json, sys, urllib.request
            from prometheus_client.parser import text_string_to_metric_families
            text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                    print(f"{s.name}{{{labels}}} {s.value!r}")
            """;
        var (code, output) = Command.Run("/usr/bin/python3", ["-c", parse, url], timeout: TimeSpan.FromSeconds(30));
        Assert.That(code, Is.EqualTo(0), output);
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' ')).ToDictionary(p => p[0], p => double.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture));
    }

    [Test]
    public void Metrics_count_reloads_restarts_and_upgrades_exactly()
    {
        using var dir = new TempDirectory();
        var argsFile = dir.File("args");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--", Paths.TestChild, "--args-file", argsFile]);
        var url = $"http://{supervisor.WaitForLine(@"Prometheus metrics on (127\.0\.0\.1:\d+)").Groups[1].Value}/metrics";
        supervisor.WaitForReady(1);

        var first = Scrape(url);
        Assert.That(first[$"gsupervisor_build_info{{version=\"{Paths.Version}\"}}"], Is.EqualTo(1));
        Assert.That(first["gsupervisor_serving_generation{}"], Is.EqualTo(1));
        Assert.That(first["gsupervisor_reloads_total{result=\"succeeded\"}"], Is.EqualTo(0));

        for (var i = 0; i < 2; i++) Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]).Code, Is.EqualTo(0));
        File.WriteAllText($"{argsFile}.4", "--exit-before-ready 3");
        Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]).Code, Is.EqualTo(1));
        Assert.That(Native.Kill(supervisor.WaitForGenerationPid(3), SIGKILL), Is.EqualTo(0));
        supervisor.WaitForReady(5);

        var metrics = Scrape(url);
        Assert.That(metrics["gsupervisor_reloads_total{result=\"succeeded\"}"], Is.EqualTo(2));
        Assert.That(metrics["gsupervisor_reloads_total{result=\"failed\"}"], Is.EqualTo(1));
        Assert.That(metrics["gsupervisor_restarts_total{}"], Is.EqualTo(1));
        Assert.That(metrics["gsupervisor_serving_generation{}"], Is.EqualTo(5));
        Assert.That(metrics["gsupervisor_generations{state=\"ready\"}"], Is.EqualTo(1));
        Assert.That(metrics["gsupervisor_generations{state=\"probation\"}"], Is.EqualTo(0));
        Assert.That(metrics["gsupervisor_reload_duration_seconds_count{}"], Is.EqualTo(2), "the successful reloads' time to ready");
        Assert.That(metrics["gsupervisor_reload_duration_seconds_bucket{le=\"+Inf\"}"], Is.EqualTo(2));
        Assert.That(metrics["gsupervisor_reload_duration_seconds_sum{}"], Is.GreaterThan(0));
        Assert.That(metrics["gsupervisor_upgrades_total{}"], Is.EqualTo(0));
        Assert.That(metrics["process_resident_memory_bytes{}"], Is.InRange(1e6, 64e6));

        var upgrade = Verb.Run(["upgrade", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(upgrade.Code, Is.EqualTo(0), upgrade.Stderr);
        var upgraded = Scrape(url);
        Assert.That(upgraded["gsupervisor_upgrades_total{}"], Is.EqualTo(1), "the same socket, served by the new image");
        Assert.That(upgraded["gsupervisor_reloads_total{result=\"succeeded\"}"], Is.EqualTo(2), "counts cross the upgrade");
        Assert.That(upgraded["gsupervisor_reloads_total{result=\"failed\"}"], Is.EqualTo(1));
        Assert.That(upgraded["gsupervisor_reload_duration_seconds_count{}"], Is.EqualTo(2));

        var status = Verb.Run(["status", "--control", supervisor.ControlPath]).Stdout;
        Assert.That(status, Does.Contain("reloads: 2 succeeded, 1 failed"));
    }

    [Test]
    public void The_endpoint_is_the_supervisors_own_and_serves_only_GET_metrics()
    {
        using var dir = new TempDirectory();
        var socket = dir.File("metrics.sock");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--metrics", "unix:" + socket, "--ready", "delay:100ms",
            "--", "/bin/sh", "-c", "printf 'child fds:'; for fd in /proc/$$/fd/*; do printf ' %s=%s' ${fd##*/} $(readlink $fd); done; echo; exec sleep 600"]);
        supervisor.WaitForReady(1);
        var fds = supervisor.WaitForLine(@"^child fds: (.+)$").Groups[1].Value;
        Assert.That(Regex.Matches(fds, @"(\d+)=socket:").Select(m => m.Groups[1].Value), Is.EqualTo(new[] { "3" }), $"the one --listen socket is the child's only socket: {fds}");

        Assert.That(Request(socket, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Does.StartWith("HTTP/1.1 200 OK").And.Contain("Content-Type: text/plain; version=0.0.4").And.Contain("gsupervisor_serving_generation 1"));
        Assert.That(Request(socket, "GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Does.StartWith("HTTP/1.1 200 OK"));
        Assert.That(Request(socket, "HEAD /metrics HTTP/1.1\r\n\r\n"), Does.StartWith("HTTP/1.1 200 OK").And.Not.Contain("gsupervisor_"));
        Assert.That(Request(socket, "GET / HTTP/1.1\r\n\r\n"), Does.StartWith("HTTP/1.1 404"));
        Assert.That(Request(socket, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Does.StartWith("HTTP/1.1 405"));
        Assert.That(Request(socket, "garbage\r\n\r\n"), Is.Empty, "not HTTP: closed unanswered");
        Assert.That(Request(socket, "GET /metrics HTTP/1.1\r\n\r\n"), Does.StartWith("HTTP/1.1 200 OK"), "and it serves on");
    }

    [Test]
    public void With_socket_activation_the_metrics_socket_leaves_the_supervisors_own_sockets_alone()
    {
        // systemd's fds 3.. are taken over and closed first; their numbers then go to the control, notify and
        // handoff sockets, which binding the metrics socket must not touch.
        using var dir = new TempDirectory();
        var path = dir.File("web.sock");
        var metricsSocket = dir.File("metrics.sock");
        var control = dir.File("control.sock"); // the activator passes on no XDG_RUNTIME_DIR
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "systemd:web", "--metrics", "unix:" + metricsSocket, "--control", control, "--", Paths.TestChild, "--listeners", "handoff", "--ready", "handoff"],
            program: "/usr/bin/systemd-socket-activate", prefix: ["-l", path, "--fdname=web"]);
        Poll.Until(() => File.Exists(path), TimeSpan.FromSeconds(30), "the activator's socket");
        var first = Task.Run(() => Http.Get(path)); // the activator starts its command on the first connection
        Assert.That(first.Wait(TimeSpan.FromSeconds(60)), Is.True);
        var status = Verb.Run(["status", "--control", control]);
        Assert.That(status.Code, Is.EqualTo(0), status.Stderr);
        Assert.That(Verb.Run(["reload", "--wait", "--control", control]).Code, Is.EqualTo(0));
        Assert.That(Request(metricsSocket, "GET /metrics HTTP/1.1\r\n\r\n"), Does.Contain("gsupervisor_serving_generation 2"));
    }

    [Test]
    public void A_client_that_trickles_its_request_holds_nothing_up()
    {
        using var dir = new TempDirectory();
        var socket = dir.File("metrics.sock");
        using var supervisor = SupervisorProcess.Start(["--metrics", "unix:" + socket, "--ready", "delay:100ms", "--", "/bin/sleep", "600"]);
        supervisor.WaitForReady(1);

        // A byte every 300 ms: it gets a second in all, then the connection is closed unanswered, and the scrape
        // that came meanwhile (it waited in the backlog, one request is read at a time) is answered.
        var trickler = Trickle(socket);
        Poll.Until(() => Request(socket, "GET /metrics HTTP/1.1\r\n\r\n").Contains("gsupervisor_serving_generation 1"), TimeSpan.FromSeconds(5),
            "a scrape answered while the slow one trickles");
        Assert.That(trickler.IsCompleted, Is.False, "answered before the slow client had even sent its request");
        var (received, took) = trickler.Result;
        Assert.That(received, Is.EqualTo(0), "the trickling client got no answer");
        Assert.That(took, Is.InRange(TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(5)), "it was cut off after its second, not served byte by byte");

        // Nor does one hold up an upgrade: the new image serves the next scrape.
        trickler = Trickle(socket);
        var upgrade = Verb.Run(["upgrade", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(upgrade.Code, Is.EqualTo(0), upgrade.Stderr);
        Assert.That(Request(socket, "GET /metrics HTTP/1.1\r\n\r\n"), Does.Contain("gsupervisor_upgrades_total 1"));
        Assert.That(trickler.Result.Received, Is.EqualTo(0));
    }

    /// <summary>Sends a request a byte every 300 ms (the slow client's pace is what is under test), then reads the answer.</summary>
    private static Task<(int Received, TimeSpan Took)> Trickle(string socket) => Task.Run(() =>
    {
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(socket));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            foreach (var b in Encoding.ASCII.GetBytes("GET /metrics HTTP/1.1\r\n\r\n"))
            {
                client.Send([b]);
                Thread.Sleep(300); // the slow client's pace is the thing under test, not a wait for a condition (nothing to poll until a deadline)
            }
            client.ReceiveTimeout = 10_000;
            return (client.Receive(new byte[64]), clock.Elapsed);
        }
        catch (SocketException)
        {
            return (0, clock.Elapsed);
        }
    });

    private static string Request(string unixPath, string request)
    {
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(unixPath));
        client.ReceiveTimeout = 10_000;
        client.Send(Encoding.ASCII.GetBytes(request));
        var response = new StringBuilder();
        var buffer = new byte[8192];
        int n;
        while ((n = client.Receive(buffer)) > 0) response.Append(Encoding.ASCII.GetString(buffer, 0, n));
        return response.ToString();
    }
}
