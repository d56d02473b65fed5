// Overview
// --------
// What the supervisor gives away and to whom: the environment a child gets, who can reach the notify,
// handoff and control endpoints, and what garbage and floods on those sockets do to the supervisor (nothing:
// it keeps serving, answering and reloading, with bounded memory and a log that does not flood).

using System.Diagnostics;
using System.Net.Sockets;
using System.Text;

namespace GSupervisor.Tests.Integration;

[TestFixture]
public class SecurityTests
{
    private static readonly TimeSpan Long = TimeSpan.FromSeconds(60);

    private static string[] Child(params string[] args) => ["--", Paths.TestChild, .. args];

    [Test]
    public void Child_environment_is_the_supervisors_own_plus_the_documented_variables_and_nothing_else()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--ready", "delay:100ms", "--", "/bin/sleep", "600"],
            environment: new Dictionary<string, string>
            {
                ["APP_SETTING"] = "passed through",
                ["LISTEN_FDS"] = "9", ["LISTEN_PID"] = "1", ["NOTIFY_SOCKET"] = "/nowhere", ["WATCHDOG_USEC"] = "1000",
                ["GSUPERVISOR_SPOOFED"] = "dropped",
            });
        var childPid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);

        // What the supervisor was started with: its environment, plus the runtime's DOTNET_* variables it moved
        // aside for its children when it started again without them (Os/RuntimeKnobs.cs).
        var parent = Native.Environ(supervisor.Pid);
        if (parent.Remove("GSUPERVISOR_CHILD_DOTNET", out var carried))
            foreach (var entry in Encoding.UTF8.GetString(Convert.FromBase64String(carried)).Split('\0').Select(e => e.Split('=', 2)))
                parent[entry[0]] = entry[1];
        var child = Native.Environ(childPid);
        string[] owned = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];
        string[] documented = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "GSUPERVISOR_HANDOFF", "GSUPERVISOR_PID", "GSUPERVISOR_GENERATION",
            "DOTNET_STARTUP_HOOKS", "SERVER_STARTER_PORT", "SERVER_STARTER_GENERATION", "EINHORN_FD_COUNT", "EINHORN_FD_0", "EINHORN_FDS"];

        var added = child.Keys.Except(parent.Keys.Where(k => !owned.Contains(k) && !k.StartsWith("GSUPERVISOR_", StringComparison.Ordinal)));
        Assert.That(added, Is.EquivalentTo(documented), "the only variables added are the documented ones");
        foreach (var (key, value) in parent.Where(p => !owned.Contains(p.Key) && !p.Key.StartsWith("GSUPERVISOR_", StringComparison.Ordinal)))
            Assert.That(child.GetValueOrDefault(key), Is.EqualTo(value), $"{key} passes through unchanged");
        Assert.That(child["LISTEN_PID"], Is.EqualTo(childPid.ToString()));
        Assert.That(child["LISTEN_FDS"], Is.EqualTo("1"));
        Assert.That(child.ContainsKey("WATCHDOG_USEC"), Is.False, "the supervisor's watchdog is its own");
        Assert.That(child.ContainsKey("GSUPERVISOR_SPOOFED"), Is.False);
    }

    [Test]
    public void Notify_handoff_and_control_endpoints_are_private_to_the_user()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child()]);
        var childPid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        var environment = Native.Environ(childPid);
        var handoff = environment["GSUPERVISOR_HANDOFF"];
        var notify = environment["NOTIFY_SOCKET"];
        var directory = Path.GetDirectoryName(handoff)!;

        Assert.That(File.GetUnixFileMode(directory) & (UnixFileMode)0x1FF, Is.EqualTo((UnixFileMode)0x1C0), "runtime directory 0700");
        Assert.That(File.GetUnixFileMode(handoff) & (UnixFileMode)0x1FF, Is.EqualTo((UnixFileMode)0x180), "handoff socket 0600");
        Assert.That(File.GetUnixFileMode(notify) & (UnixFileMode)0x1FF, Is.EqualTo((UnixFileMode)0x180), "notify socket 0600");
        Assert.That(File.GetUnixFileMode(supervisor.ControlPath) & (UnixFileMode)0x1FF, Is.EqualTo((UnixFileMode)0x180), "control socket 0600");

    }

    [Test]
    public void Another_user_is_stopped_by_the_file_modes_and_again_by_the_daemons_own_credential_check()
    {
        Assert.That(Native.GetEffectiveUserId(), Is.EqualTo(0u), "acting as another user needs root (CI runs as root)");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild, "--listeners", "handoff", "--ready", "handoff"]);
        supervisor.WaitForReady(1);
        var handoff = Native.Environ(supervisor.WaitForGenerationPid(1))["GSUPERVISOR_HANDOFF"];

        // Another user cannot even reach them: connecting as nobody fails with EACCES (exit 77).
        foreach (var path in new[] { handoff, supervisor.ControlPath })
        {
            var (code, _, stderr) = Verb.Run(["status", "--control", path], asUser: "65534");
            Assert.That(code, Is.EqualTo(77), $"{path}: {stderr}");
        }
        Assert.That(supervisor.Output, Does.Not.Contain("refused a"), "the file modes stopped them before the daemon saw them");

        // With the file modes out of the way (CAP_DAC_OVERRIDE), the daemon's SO_PEERCRED check refuses them itself.
        var (controlCode, _, controlError) = Verb.Run(["status", "--control", supervisor.ControlPath], asUser: "65534", overridingFileModes: true);
        Assert.That(controlCode, Is.EqualTo(77), controlError);
        Assert.That(controlError, Does.Contain("only the daemon's user or root may control it"));
        supervisor.WaitForLine(@"refused a control connection from pid \d+ uid 65534");
        Verb.Run(["status", "--control", handoff], asUser: "65534", overridingFileModes: true);
        supervisor.WaitForLine(@"refused a handoff connection from pid \d+: uid 65534 is not the children's uid 0");
    }

    [Test]
    public void Garbage_from_a_child_on_the_notify_and_handoff_sockets_does_not_hurt_the_supervisor()
    {
        // Generation 1 sends thousands of random, broken and oversized messages before its real READY=1.
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("args.1"), "--fuzz-sockets 3000");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child("--args-file", dir.File("args"))]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        Assert.That(Http.Get(port), Does.EndWith("gen=1"));

        var (code, status, _) = Verb.Run(["status", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0));
        Assert.That(status, Does.Contain("serving: generation 1"));
        Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]).Code, Is.EqualTo(0), "it still reloads");
        Http.UntilGeneration(() => Http.Get(port), 2);

        var lines = supervisor.Lines;
        Assert.That(lines.Count(l => l.Contains("dropped a") || l.Contains("closed the handoff connection")), Is.InRange(1, 21),
            "refusals are logged, at a capped rate (20 a minute)");
        Assert.That(lines, Has.None.Contains("internal error"));
    }

    [Test]
    public void No_READY_1_inside_garbage_counts()
    {
        // The fuzz holds READY=1 inside messages that are broken (a NUL, invalid UTF-8): none may count.
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--ready-timeout", "5s", .. Child("--fuzz-sockets", "2000", "--ready", "never")]);
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) sent no READY=1 within 5s");
        Assert.That(supervisor.WaitForExit(Long), Is.EqualTo(1), "the first generation never became ready");
        Assert.That(supervisor.Output, Does.Not.Contain("is ready"));
    }

    [Test]
    public void An_oversized_line_on_the_handoff_socket_ends_that_connection_only()
    {
        // --fuzz-sockets 0: no random messages, only eight connections that each send a 64 KiB line.
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child("--fuzz-sockets", "0")]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        supervisor.WaitForLine(@"closed the handoff connection of pid \d+ \(generation 1\): a line longer than 4096 bytes");
        Assert.That(Http.Get(port), Does.EndWith("gen=1"));
    }

    [Test]
    public void A_flood_from_a_foreign_process_leaves_memory_bounded_and_the_supervisor_responsive()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child()]);
        var childPid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        var environment = Native.Environ(childPid);
        var rssBefore = Native.RssKiB(supervisor.Pid);

        using var stop = new CancellationTokenSource();
        long datagrams = 0, connections = 0;
        var flood = Task.Factory.StartNew(() =>
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            var endpoint = new UnixDomainSocketEndPoint(environment["NOTIFY_SOCKET"]);
            var message = new byte[4000];
            "READY=1\n"u8.CopyTo(message);
            message.AsSpan(8).Fill((byte)'x');
            while (!stop.IsCancellationRequested)
            {
                socket.SendTo(message, endpoint);
                datagrams++;
            }
        }, TaskCreationOptions.LongRunning);
        var connecting = Task.Factory.StartNew(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    socket.Connect(new UnixDomainSocketEndPoint(environment["GSUPERVISOR_HANDOFF"]));
                    socket.Send("READY=1\n"u8);
                }
                catch (SocketException)
                {
                    // refused and closed before our send: that is the supervisor doing its job
                }
                connections++;
            }
        }, TaskCreationOptions.LongRunning);
        try
        {
            Poll.Until(() => Interlocked.Read(ref datagrams) > 20_000 && Interlocked.Read(ref connections) > 500, Long, "the flood to get going");
            // While it floods: status is answered promptly and a reload goes through.
            var clock = Stopwatch.StartNew();
            Assert.That(Verb.Run(["status", "--control", supervisor.ControlPath]).Code, Is.EqualTo(0));
            var statusTime = clock.Elapsed;
            Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]).Code, Is.EqualTo(0));
            var rssDuring = Native.RssKiB(supervisor.Pid);
            TestContext.Out.WriteLine($"flood: {Interlocked.Read(ref datagrams)} datagrams, {Interlocked.Read(ref connections)} connections; " +
                $"status answered in {statusTime.TotalMilliseconds:F0} ms; RSS {rssBefore / 1024} -> {rssDuring / 1024} MiB");
            Assert.That(statusTime, Is.LessThan(TimeSpan.FromSeconds(5)));
            Assert.That(rssDuring - rssBefore, Is.LessThan(48 * 1024), "the queue of what children send is bounded");
        }
        finally
        {
            stop.Cancel();
            Task.WaitAll([flood, connecting], Long);
        }
        Assert.That(supervisor.Lines.Count(l => l.Contains($"from pid {Environment.ProcessId}")), Is.LessThanOrEqualTo(100), "refusals logged at a capped rate");
        Assert.That(supervisor.HasExited, Is.False);
    }
}
