using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

namespace GSupervisor.Tests.Integration;

/// <summary>The real gsupervisor binary with real children, sockets and signals.</summary>
[TestFixture]
public class SupervisorTests
{
    private const int SIGHUP = 1, SIGINT = 2, SIGKILL = 9, SIGUSR2 = 12, SIGTERM = 15;
    private static readonly TimeSpan Long = TimeSpan.FromSeconds(60);

    private static string[] Child(params string[] args) => ["--", Paths.TestChild, .. args];

    [Test]
    public void Child_sees_exactly_the_contract_sockets_environment_and_signal_state()
    {
        using var dir = new TempDirectory();
        var script = $$"""
            r={{dir.Path}}/report.$GSUPERVISOR_GENERATION
            ls -d /proc/$$/fd/*
            {
              echo pid=$$
              echo pgid=$(cut -d' ' -f5 /proc/$$/stat)
              echo LISTEN_PID=$LISTEN_PID
              echo LISTEN_FDS=$LISTEN_FDS
              echo LISTEN_FDNAMES=$LISTEN_FDNAMES
              echo GSUPERVISOR_GENERATION=$GSUPERVISOR_GENERATION
              echo GSUPERVISOR_PID=$GSUPERVISOR_PID
              echo GSUPERVISOR_HANDOFF=$GSUPERVISOR_HANDOFF
              echo NOTIFY_SOCKET=$NOTIFY_SOCKET
              echo SECRET=$SECRET_FROM_PARENT
              grep -E '^Sig(Ign|Blk)' /proc/$$/status | tr -d ' \t' | tr ':' '='
              echo fd3=$(readlink /proc/$$/fd/3)
            } > $r.tmp
            mv $r.tmp $r
            exec sleep 600
            """;
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "web=127.0.0.1:0", "--listen", $"unix:{dir.File("app.sock")}", "--ready", "delay:200ms", "--", "/bin/sh", "-c", script],
            environment: new Dictionary<string, string> { ["SECRET_FROM_PARENT"] = "kept", ["LISTEN_FDS"] = "9", ["NOTIFY_SOCKET"] = "/nowhere" });
        supervisor.WaitForReady(1);
        var report = dir.File("report.1");
        Poll.Until(() => File.Exists(report), Long, "the child's report");
        var values = File.ReadAllLines(report).Select(l => l.Split('=', 2)).ToDictionary(p => p[0], p => p[1]);

        Assert.That(values["LISTEN_PID"], Is.EqualTo(values["pid"]), "LISTEN_PID is the child's own pid");
        Assert.That(values["pgid"], Is.EqualTo(values["pid"]), "the child leads its own process group");
        Assert.That(values["LISTEN_FDS"], Is.EqualTo("2"), "the supervisor's own LISTEN_FDS is replaced");
        Assert.That(values["LISTEN_FDNAMES"], Is.EqualTo("web:unknown"));
        Assert.That(values["GSUPERVISOR_GENERATION"], Is.EqualTo("1"));
        Assert.That(values["GSUPERVISOR_PID"], Is.EqualTo(supervisor.Pid.ToString()));
        Assert.That(values["GSUPERVISOR_HANDOFF"], Does.EndWith("/handoff"));
        Assert.That(values["NOTIFY_SOCKET"], Does.EndWith("/notify"));
        Assert.That(values["SECRET"], Is.EqualTo("kept"), "the supervisor's environment passes through");
        Assert.That(values["SigIgn"], Is.EqualTo("0000000000000000"), "no signal ignored, SIGPIPE included");
        Assert.That(values["SigBlk"], Is.EqualTo("0000000000000000"), "empty signal mask");
        Assert.That(values["fd3"], Does.StartWith("socket:"));
        // Listed by the shell's first command, before any redirection of its own opens more fds.
        var fds = supervisor.Lines.Select(l => Regex.Match(l, $@"^/proc/{values["pid"]}/fd/(\d+)$"))
            .Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value)).Order().ToArray();
        Assert.That(fds, Is.EqualTo(new[] { 0, 1, 2, 3, 4 }), "only stdio and the two listeners reach the child");

        // The child's listeners answer: the unix socket accepts connections into the shared queue.
        using var unix = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        unix.Connect(new UnixDomainSocketEndPoint(dir.File("app.sock")));
    }

    [Test]
    public void Supervisor_never_catches_SIGCHLD_so_the_runtime_cannot_reap_its_children()
    {
        // As PID 1 the .NET runtime reaps every child from its SIGCHLD handler, if one is installed;
        // the supervisor's reaper must stay the only one that waits.
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child()]);
        supervisor.WaitForReady(1);
        Assert.That(Native.Catches(supervisor.Pid, 17), Is.False, "SIGCHLD is not caught");
        Assert.That(Native.Catches(supervisor.Pid, 12), Is.True, "SIGUSR2 is caught");
    }

    [Test]
    public void Serves_on_the_handed_socket_by_LISTEN_FDS_and_sd_notify()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child("--ready", "notify")]);
        var port = supervisor.WaitForPort();
        var pid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) is ready \(READY=1 via NOTIFY_SOCKET");
        Assert.That(Http.Get(port), Is.EqualTo($"pid={pid} gen=1"));
    }

    [Test]
    public void A_shell_script_child_reports_ready_with_systemd_notify()
    {
        // systemd-notify sends READY=1, then BARRIER=1 with a pipe end, and waits for the supervisor to close that
        // end: so it is still alive, and attributable to the generation, when its READY=1 is handled.
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--ready-timeout", "20s", "--",
            "/bin/sh", "-c", "systemd-notify --ready --status='warmed up' && exec sleep 600"]);
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) is ready \(READY=1 via NOTIFY_SOCKET");
        var (code, status, _) = Verb.Run(["status", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0));
        Assert.That(status, Does.Contain("status: warmed up"));
        Assert.That(supervisor.Output, Does.Not.Contain("dropped a notify message"));
    }

    [Test]
    public void Serves_on_sockets_received_over_the_handoff_socket()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child("--listeners", "handoff", "--ready", "handoff")]);
        var port = supervisor.WaitForPort();
        var pid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) is ready \(READY=1 via handoff socket");
        Assert.That(Http.Get(port), Is.EqualTo($"pid={pid} gen=1"));
    }

    [TestCase("fds", "notify", 10)]
    [TestCase("handoff", "handoff", 5)]
    public void Reloads_under_new_connection_load_fail_no_request(string listeners, string ready, int reloads)
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child("--listeners", listeners, "--ready", ready)]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        using var load = new NewConnectionLoad(port, workers: 4);
        Poll.Until(() => load.Successes > 20, Long, "the load to get going");

        for (var generation = 2; generation <= reloads + 1; generation++)
        {
            var oldPid = int.Parse(supervisor.WaitForLine($@"generation {generation - 1} \(pid (\d+)\) started").Groups[1].Value);
            var before = load.Successes;
            supervisor.Signal(generation % 2 == 0 ? SIGUSR2 : SIGHUP);
            supervisor.WaitForLine($@"reload succeeded: generation {generation} \(pid \d+\) is serving");
            supervisor.WaitForLine($@"generation {generation - 1} \(pid {oldPid}\) exited");
            Assert.That(Native.IsAlive(oldPid), Is.False, $"generation {generation - 1} is gone");
            Poll.Until(() => load.Successes > before + 10, Long, $"requests after reload {generation - 1}");
        }
        load.Stop();

        TestContext.Out.WriteLine($"{reloads} reloads, {load.Successes} requests, {load.Failures.Count} failed");
        Assert.That(load.Failures, Is.Empty);
        Assert.That(load.GenerationsSeen, Does.Contain((reloads + 1).ToString()), "the last generation served");
    }

    [Test]
    public void New_generation_that_never_becomes_ready_is_rolled_back_and_the_old_one_still_answers()
    {
        using var dir = new TempDirectory();
        var argsFile = dir.File("args");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--ready-timeout", "1s", .. Child("--args-file", argsFile)]);
        var port = supervisor.WaitForPort();
        var firstPid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);

        File.WriteAllText(argsFile, "--ready never");
        supervisor.Signal(SIGUSR2);
        var secondPid = supervisor.WaitForGenerationPid(2);
        // A READY=1 from a process outside the generation does not count.
        using (var foreign = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified))
        {
            var notifyPath = Path.Combine(Path.GetDirectoryName(HandoffPath(secondPid))!, "notify");
            foreign.SendTo("READY=1"u8.ToArray(), new UnixDomainSocketEndPoint(notifyPath));
        }
        supervisor.WaitForLine($@"dropped a notify message from pid {Environment.ProcessId}: not a process of any running generation");
        var line = supervisor.WaitForLine(@"generation 2 \(pid \d+\) sent no READY=1 within 1s.*").Value;
        Assert.That(line, Does.Contain("--ready delay:2s"), "the log says what to try");
        supervisor.WaitForLine(@"reload failed: .*generation 1 \(pid \d+\) keeps serving");
        supervisor.WaitForLine($@"generation 2 \(pid {secondPid}\) exited");

        Assert.That(Http.Get(port), Is.EqualTo($"pid={firstPid} gen=1"));
        Assert.That(Native.IsAlive(secondPid), Is.False);
    }

    [Test]
    public void New_generation_that_exits_before_ready_is_rolled_back()
    {
        using var dir = new TempDirectory();
        var argsFile = dir.File("args");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child("--args-file", argsFile)]);
        var port = supervisor.WaitForPort();
        var firstPid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);

        File.WriteAllText(argsFile, "--exit-before-ready 3");
        supervisor.Signal(SIGUSR2);
        supervisor.WaitForLine(@"generation 2 \(pid \d+\) exited with exit code 3 before it was ready");
        supervisor.WaitForLine(@"reload failed: .*keeps serving");
        Assert.That(Http.Get(port), Is.EqualTo($"pid={firstPid} gen=1"));

        // The next reload, with the fault gone, goes through.
        File.Delete(argsFile);
        supervisor.Signal(SIGUSR2);
        supervisor.WaitForLine(@"reload succeeded: generation 3");
        supervisor.WaitForLine($@"generation 1 \(pid {firstPid}\) exited"); // until then it may still answer
        Assert.That(Http.Get(port), Does.EndWith("gen=3"));
    }

    [Test]
    public void SIGTERM_stops_every_child_and_exits_0_leaving_nothing_behind()
    {
        using var dir = new TempDirectory();
        var socketPath = dir.File("app.sock");
        using var supervisor = SupervisorProcess.Start(
            ["--listen", "127.0.0.1:0", "--listen", $"unix:{socketPath}", "--pid-file", dir.File("pid"), .. Child()]);
        var pid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        var handoff = HandoffPath(pid);
        Assert.That(File.ReadAllText(dir.File("pid")).Trim(), Is.EqualTo(supervisor.Pid.ToString()));

        supervisor.Signal(SIGTERM);
        Assert.That(supervisor.WaitForExit(Long), Is.EqualTo(0));
        Assert.That(Native.IsAlive(pid), Is.False);
        Assert.That(File.Exists(socketPath), Is.False, "our unix socket file is removed");
        Assert.That(File.Exists(dir.File("pid")), Is.False, "the pid file is removed");
        Assert.That(Directory.Exists(Path.GetDirectoryName(handoff)), Is.False, "the private runtime directory is removed");
    }

    [Test]
    public void Second_SIGINT_kills_a_child_that_ignores_the_stop_signal()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--stop-timeout", "5m", .. Child("--ignore-term")]);
        var pid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        supervisor.Signal(SIGINT);
        supervisor.WaitForLine("SIGINT received; stopping 1 generation");
        supervisor.Signal(SIGINT);
        supervisor.WaitForLine("killing every generation at once");
        Assert.That(supervisor.WaitForExit(Long), Is.EqualTo(0));
        Assert.That(Native.IsAlive(pid), Is.False);
    }

    [Test]
    public void Crashed_child_is_restarted_while_the_listener_stays_open()
    {
        using var dir = new TempDirectory();
        var argsFile = dir.File("args");
        File.WriteAllText(argsFile, "--crash-after-ready-ms 300");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child("--args-file", argsFile)]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        File.Delete(argsFile);
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) exited unexpectedly with exit code 70");
        supervisor.WaitForLine("restarting in 250ms");
        supervisor.WaitForReady(2);
        Assert.That(Http.Get(port), Does.EndWith("gen=2"));
    }

    [Test]
    public void With_no_restart_the_supervisor_exits_with_the_childs_status()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--no-restart", .. Child("--crash-after-ready-ms", "100")]);
        supervisor.WaitForReady(1);
        Assert.That(supervisor.WaitForExit(Long), Is.EqualTo(70));
    }

    [Test]
    public void Handoff_socket_refuses_a_process_outside_every_generation()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", .. Child()]);
        var pid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);

        using var foreign = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        foreign.Connect(new UnixDomainSocketEndPoint(HandoffPath(pid)));
        var buffer = new byte[256];
        var received = new StringBuilder();
        int n;
        while ((n = foreign.Receive(buffer)) > 0) received.Append(Encoding.ASCII.GetString(buffer, 0, n));
        Assert.That(received.ToString(), Does.StartWith("ERR "));
        supervisor.WaitForLine($@"refused a handoff connection from pid {Environment.ProcessId}: not a process of any running generation");
    }

    [Test]
    public void Leftover_processes_of_a_stopped_generation_are_ended()
    {
        // Generation 1 leaves a worker behind in its process group when it exits: it must not live on.
        using var dir = new TempDirectory();
        var script = $"sleep 600 & echo $! > {dir.Path}/worker.$GSUPERVISOR_GENERATION; trap 'exit 0' TERM; wait";
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--ready", "delay:200ms", "--", "/bin/sh", "-c", script]);
        supervisor.WaitForReady(1);
        var workerFile = dir.File("worker.1");
        Poll.Until(() => File.Exists(workerFile) && File.ReadAllText(workerFile).Trim().Length > 0, TimeSpan.FromSeconds(30), "the worker's pid");
        var worker = int.Parse(File.ReadAllText(workerFile).Trim());
        Assert.That(Native.IsAlive(worker), Is.True);

        supervisor.Signal(SIGUSR2);
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) exited with exit code 0");
        Poll.Until(() => !Native.IsAlive(worker), TimeSpan.FromSeconds(30), "the leftover worker to be ended and reaped");
    }

    [Test]
    public void Children_run_as_the_user_and_group_given()
    {
        if (Native.GetEffectiveUserId() != 0)
        {
            // Not root: switching users is impossible, and the supervisor must say so before anything starts.
            using var refused = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--user", "nobody", "--", "/bin/true"]);
            Assert.That(refused.WaitForExit(TimeSpan.FromSeconds(30)), Is.EqualTo(64));
            Assert.That(refused.Output, Does.Contain("--user and --group need gsupervisor to run as root"));
            return;
        }
        using var dir = new TempDirectory();
        File.SetUnixFileMode(dir.Path, (UnixFileMode)0x1FF); // the child, as nobody, writes its report here
        var report = dir.File("who");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--user", "nobody", "--group", "nogroup", "--ready", "delay:200ms", "--",
            "/bin/sh", "-c", $"echo \"$(id -u) $(id -g) $HOME $USER $LISTEN_FDS $(test -w $NOTIFY_SOCKET && echo notify-ok)\" > {report}; exec sleep 600"]);
        supervisor.WaitForReady(1);
        Poll.Until(() => File.Exists(report) && File.ReadAllText(report).Length > 0, TimeSpan.FromSeconds(30), "the child's report");
        var fields = File.ReadAllText(report).Trim().Split(' ');
        Assert.That(fields[0], Is.EqualTo("65534"), "uid");
        Assert.That(fields[1], Is.EqualTo("65534"), "gid");
        Assert.That(fields[3], Is.EqualTo("nobody"), "USER");
        Assert.That(fields[4], Is.EqualTo("1"), "LISTEN_FDS");
        Assert.That(fields.Last(), Is.EqualTo("notify-ok"), "the child's user can reach NOTIFY_SOCKET");
    }

    [Test]
    public void Stale_unix_socket_file_is_replaced()
    {
        using var dir = new TempDirectory();
        var path = dir.File("stale.sock");
        Native.MakeStaleUnixSocket(path);
        Assert.That(File.Exists(path), Is.True);
        using var supervisor = SupervisorProcess.Start(["--listen", $"unix:{path}", .. Child()]);
        supervisor.WaitForReady(1);
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(path));
        client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray());
        var buffer = new byte[512];
        Assert.That(Encoding.ASCII.GetString(buffer, 0, client.Receive(buffer)), Does.StartWith("HTTP/1.1 200"));
    }

    /// <summary>
    /// The handoff path from the environment of a running child. Right after "started" is logged the process may
    /// not have reached its exec yet (it still has the supervisor's own environment), so this waits for it.
    /// </summary>
    private static string HandoffPath(int childPid)
    {
        string? path = null;
        Poll.Until(() => Native.Environ(childPid).TryGetValue("GSUPERVISOR_HANDOFF", out path), TimeSpan.FromSeconds(10),
            $"pid {childPid} to be exec'd with its environment");
        return path!;
    }
}
