using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

namespace GSupervisor.Tests.Integration;

/// <summary>gsupervisor toward systemd, with a fake systemd: a datagram socket given as its NOTIFY_SOCKET.</summary>
[TestFixture]
public class SystemdTests
{
    private static long MonotonicMicroseconds() => (long)(Stopwatch.GetTimestamp() * (1_000_000.0 / Stopwatch.Frequency));

    /// <summary>Receives notify messages, keeping WATCHDOG=1 pings apart from the rest.</summary>
    private sealed class FakeSystemd : IDisposable
    {
        private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        public int WatchdogPings { get; private set; }

        public FakeSystemd(string path)
        {
            _socket.Bind(new UnixDomainSocketEndPoint(path));
            _socket.ReceiveTimeout = 30_000;
        }

        /// <summary>The next message that is not a watchdog ping, as its fields.</summary>
        public Dictionary<string, string> Next()
        {
            var buffer = new byte[4096];
            while (true)
            {
                var n = _socket.Receive(buffer);
                var fields = Encoding.UTF8.GetString(buffer, 0, n).Split('\n', StringSplitOptions.RemoveEmptyEntries)
                    .Select(l => l.Split('=', 2)).ToDictionary(p => p[0], p => p[1]);
                if (fields.Count == 1 && fields.ContainsKey("WATCHDOG")) { WatchdogPings++; continue; }
                return fields;
            }
        }

        public void Dispose() => _socket.Dispose();
    }

    [Test]
    public void Tells_systemd_ready_reloading_ready_status_stopping_and_pings_the_watchdog()
    {
        using var dir = new TempDirectory();
        using var systemd = new FakeSystemd(dir.File("notify"));
        var argsFile = dir.File("args");
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "127.0.0.1:0", "--", Paths.TestChild, "--args-file", argsFile],
            environment: new Dictionary<string, string> { ["NOTIFY_SOCKET"] = dir.File("notify"), ["WATCHDOG_USEC"] = "400000" });

        var ready = systemd.Next();
        Assert.That(ready["READY"], Is.EqualTo("1"));
        Assert.That(ready["STATUS"], Does.Match(@"^serving generation 1 \(pid \d+\)$"));

        var before = MonotonicMicroseconds();
        supervisor.Signal(12);
        var reloading = systemd.Next();
        var after = MonotonicMicroseconds();
        Assert.That(reloading["RELOADING"], Is.EqualTo("1"));
        Assert.That(long.Parse(reloading["MONOTONIC_USEC"]), Is.InRange(before, after), "MONOTONIC_USEC is CLOCK_MONOTONIC at the reload");
        Assert.That(reloading["STATUS"], Does.Contain("starting generation 2"));
        var reloaded = systemd.Next();
        Assert.That(reloaded["READY"], Is.EqualTo("1"));
        Assert.That(reloaded["STATUS"], Does.Match(@"^serving generation 2 \(pid \d+\); last reload succeeded$"));

        File.WriteAllText(argsFile, "--exit-before-ready 3");
        supervisor.Signal(12);
        Assert.That(systemd.Next()["RELOADING"], Is.EqualTo("1"));
        var rolledBack = systemd.Next();
        Assert.That(rolledBack["READY"], Is.EqualTo("1"), "READY=1 ends a failed reload too");
        Assert.That(rolledBack["STATUS"], Does.StartWith("serving generation 2").And.Contain("last reload failed").And.Contain("exit code 3"));

        supervisor.Signal(15);
        Assert.That(systemd.Next()["STOPPING"], Is.EqualTo("1"));
        Assert.That(supervisor.WaitForExit(TimeSpan.FromSeconds(60)), Is.EqualTo(0));
        Assert.That(systemd.WatchdogPings, Is.GreaterThan(0), "WATCHDOG=1 every half WATCHDOG_USEC");
    }

    [Test]
    public void With_a_probation_systemd_hears_READY_only_when_the_probation_ends()
    {
        using var dir = new TempDirectory();
        using var systemd = new FakeSystemd(dir.File("notify"));
        var argsFile = dir.File("args");
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "127.0.0.1:0", "--probation", "1500ms", "--", Paths.TestChild, "--args-file", argsFile],
            environment: new Dictionary<string, string> { ["NOTIFY_SOCKET"] = dir.File("notify") });
        Assert.That(systemd.Next()["READY"], Is.EqualTo("1"), "the first generation has no probation");

        var clock = Stopwatch.StartNew();
        supervisor.Signal(12);
        Assert.That(systemd.Next()["RELOADING"], Is.EqualTo("1"));
        var onProbation = systemd.Next();
        Assert.That(onProbation.ContainsKey("READY"), Is.False);
        Assert.That(onProbation["STATUS"], Does.Contain("generation 2 is on probation for 1.5s, serving beside generation 1"));
        var passed = systemd.Next();
        Assert.That(passed["READY"], Is.EqualTo("1"));
        Assert.That(clock.Elapsed, Is.GreaterThan(TimeSpan.FromSeconds(1.5)), "READY=1 came at the probation's end");
        Assert.That(passed["STATUS"], Does.Match(@"^serving generation 2 \(pid \d+\); last reload succeeded$"));

        // A failure reported over NOTIFY_SOCKET during the probation: READY=1 comes with the rollback.
        File.WriteAllText(argsFile, "--fail-after-ready-ms 200");
        var linesBefore = supervisor.LineCount;
        supervisor.Signal(12);
        Assert.That(systemd.Next()["RELOADING"], Is.EqualTo("1"));
        Assert.That(systemd.Next()["STATUS"], Does.Contain("generation 3 is on probation"));
        var rolledBack = systemd.Next();
        Assert.That(rolledBack["READY"], Is.EqualTo("1"));
        Assert.That(rolledBack["STATUS"], Does.StartWith("serving generation 2").And.Contain(
            "last reload failed: generation 3 (pid").And.Contain("reported failure (WATCHDOG=trigger via NOTIFY_SOCKET; its status: the test asked this generation to fail) during its probation"));
        var thirdPid = supervisor.WaitForGenerationPid(3);
        supervisor.WaitForLine($"TestChild pid {thirdPid}: got SIGTERM", TimeSpan.FromSeconds(30), after: linesBefore); // drained, not killed
    }

    [Test]
    public void Children_never_see_the_supervisors_own_notify_socket_or_watchdog()
    {
        using var dir = new TempDirectory();
        using var systemd = new FakeSystemd(dir.File("notify"));
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "127.0.0.1:0", "--ready", "delay:100ms", "--", "/bin/sh", "-c", "echo child NOTIFY_SOCKET=$NOTIFY_SOCKET WATCHDOG_USEC=$WATCHDOG_USEC; exec sleep 600"],
            environment: new Dictionary<string, string> { ["NOTIFY_SOCKET"] = dir.File("notify"), ["WATCHDOG_USEC"] = "10000000" });
        var line = supervisor.WaitForLine("^child NOTIFY_SOCKET=(.*) WATCHDOG_USEC=(.*)$");
        Assert.That(line.Groups[1].Value, Is.Not.EqualTo(dir.File("notify")).And.EndWith("/notify"));
        Assert.That(line.Groups[2].Value, Is.Empty);
    }
}

/// <summary>Socket activation of the supervisor itself, driven by systemd's own activator.</summary>
[TestFixture]
public class SocketActivationTests
{
    private const string Activator = "/usr/bin/systemd-socket-activate";

    [Test]
    public void Adopts_the_sockets_systemd_passes_and_hands_them_on_by_name()
    {
        Assert.That(File.Exists(Activator), Is.True, "systemd-socket-activate (Debian's systemd package; .ci/run installs it)");
        // A Unix socket in the test's own folder: systemd-socket-activate takes no port 0.
        using var dir = new TempDirectory();
        var path = dir.File("web.sock");
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "systemd:web", "--", Paths.TestChild, "--listeners", "handoff", "--ready", "handoff"],
            program: Activator, prefix: ["-l", path, "--fdname=web"]);
        Poll.Until(() => File.Exists(path), TimeSpan.FromSeconds(30), "the activator's socket");
        // The activator starts its command on the first connection; that connection waits in the queue.
        var first = Task.Run(() => Http.Get(path));
        supervisor.WaitForLine($@"listening on unix:{Regex.Escape(path)} \(fd 3 in the child, name web\)");
        var pid = supervisor.WaitForGenerationPid(1);
        Assert.That(first.Wait(TimeSpan.FromSeconds(60)), Is.True);
        Assert.That(first.Result, Is.EqualTo($"pid={pid} gen=1"));

        supervisor.Signal(12);
        supervisor.WaitForLine("reload succeeded: generation 2 ");
        supervisor.WaitForLine($@"generation 1 \(pid {pid}\) exited");
        Assert.That(Http.Get(path), Does.EndWith("gen=2"));
    }

    [Test]
    public void Asking_for_a_name_systemd_did_not_pass_is_one_clear_error()
    {
        Assert.That(File.Exists(Activator), Is.True, "systemd-socket-activate (Debian's systemd package; .ci/run installs it)");
        using var dir = new TempDirectory();
        var path = dir.File("web.sock");
        using var supervisor = SupervisorProcess.Start(["--listen", "systemd:admin", "--", "/bin/true"],
            program: Activator, prefix: ["-l", path, "--fdname=web"]);
        Poll.Until(() => File.Exists(path), TimeSpan.FromSeconds(30), "the activator's socket");
        using (var trigger = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            trigger.Connect(new UnixDomainSocketEndPoint(path));
        Assert.That(supervisor.WaitForExit(TimeSpan.FromSeconds(30)), Is.EqualTo(69));
        Assert.That(supervisor.Output, Does.Contain("systemd passed no socket named 'admin' (it passed: web)"));
    }

    [Test]
    public void Without_systemd_sockets_listen_systemd_is_refused()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "systemd", "--", "/bin/true"]);
        Assert.That(supervisor.WaitForExit(TimeSpan.FromSeconds(30)), Is.EqualTo(69));
        Assert.That(supervisor.Output, Does.Contain("systemd passed no sockets"));
    }


}
