// Overview
// --------
// Faults found by review and by a held-out battery, each reproduced against the installed binary: a
// generation is its whole process group (a wrapper that forked its server drains as one); a signal that comes
// as soon as the supervisor is announced is handled, not fatal; the pid file is not written through a planted
// symlink, nor the control socket put where others could swap it; the control client believes only a server of
// its own user or root; READY=1 counts from any process of the generation's process group.

using System.Diagnostics;

namespace GSupervisor.Tests.Integration;

[TestFixture]
public class HardeningTests
{
    private const int SIGUSR2 = 12;

    [Test]
    public void A_wrapper_that_forked_its_server_drains_as_one_process_group()
    {
        // sh is the generation's leader and dies at SIGTERM at once; the server it forked finishes its slow
        // requests. Only signalling the leader and killing the group when it exits failed some of them.
        using var dir = new TempDirectory();
        var script = $"{Paths.TestChild} --listeners handoff --ready handoff --response-delay-ms 1500 & wait";
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--stop-timeout", "20s", "--", "/bin/sh", "-c", script]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);

        var slow = Enumerable.Range(0, 12).Select(_ => Task.Run(() => Http.Get(port))).ToList();
        supervisor.Signal(SIGUSR2);
        supervisor.WaitForLine(@"reload succeeded: generation 2 ");
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) exited with .*; the rest of its process group is still draining");
        Assert.That(Task.WhenAll(slow).Wait(TimeSpan.FromSeconds(30)), Is.True, "the slow requests finish");
        Assert.That(slow.Select(t => t.Result), Has.All.Match(@"^pid=\d+ gen=[12]$"), "every slow request was answered");
        Assert.That(slow.Count(t => t.Result.EndsWith("gen=1", StringComparison.Ordinal)), Is.GreaterThan(0), "some were in flight on generation 1");
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) exited with .* \(its whole process group\)");
        Assert.That(supervisor.Output, Does.Not.Contain("SIGKILL"));
    }

    [Test]
    public void Reload_signals_sent_the_instant_the_pid_file_appears_are_reloads()
    {
        // A deploy script that waits for the pid file (inotify reacts within microseconds) and sends SIGUSR2.
        // The file used to be written before the handlers existed, and the default action ended the supervisor.
        using var dir = new TempDirectory();
        var pidFile = dir.File("gsupervisor.pid");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--pid-file", pidFile, "--", Paths.TestChild]);
        var waited = Stopwatch.StartNew();
        while (!File.Exists(pidFile))
        {
            if (waited.Elapsed > TimeSpan.FromSeconds(30)) Assert.Fail("no pid file within 30s");
            Thread.SpinWait(20); // a bounded busy wait: reacting within microseconds is the point
        }
        var pid = int.Parse(File.ReadAllText(pidFile).Trim());
        for (var i = 0; i < 20; i++) Assert.That(Native.Kill(pid, SIGUSR2), Is.EqualTo(0), "the supervisor is still there");
        supervisor.WaitForLine(@"reload succeeded: generation 2 ", TimeSpan.FromSeconds(60));
        Assert.That(supervisor.HasExited, Is.False);
        Assert.That(supervisor.Output, Does.Not.Contain("generation 4"), "twenty signals during a start collapse into one reload after it");
    }

    [Test]
    public void The_pid_file_is_not_written_through_a_planted_symlink()
    {
        using var dir = new TempDirectory();
        var victim = dir.File("victim");
        File.WriteAllText(victim, "precious\n");
        var pidFile = dir.File("gsupervisor.pid");
        File.CreateSymbolicLink(pidFile + ".tmp", victim);
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--pid-file", pidFile, "--", Paths.TestChild]);
        supervisor.WaitForReady(1);
        Assert.That(File.ReadAllText(victim), Is.EqualTo("precious\n"), "the file the symlink points to is untouched");
        Assert.That(File.ReadAllText(pidFile).Trim(), Is.EqualTo(supervisor.Pid.ToString()));
        Assert.That(new FileInfo(pidFile).LinkTarget, Is.Null, "the pid file is a file of its own");
    }

    [Test]
    public void The_control_client_refuses_a_server_of_another_user()
    {
        Assert.That(Native.GetEffectiveUserId(), Is.EqualTo(0u), "running a daemon as another user needs root (CI runs as root)");
        using var dir = new TempDirectory();
        File.SetUnixFileMode(dir.Path, (UnixFileMode)0x3FF); // 01777, as /tmp: nobody may make its control socket here
        var control = dir.File("control.sock");
        using var foreign = SupervisorProcess.Start(["--control", control, "--ready", "delay:100ms", "--", "/bin/sleep", "600"],
            program: "/usr/bin/setpriv", prefix: ["--reuid=65534", "--regid=65534", "--clear-groups"],
            environment: new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = dir.Path, ["HOME"] = "/tmp" });
        foreign.WaitForReady(1);

        var (code, stdout, stderr) = Verb.Run(["reload", "--wait", "--control", control]);
        Assert.That(code, Is.EqualTo(77), stdout + stderr);
        Assert.That(stderr, Does.Contain("uid 65534").And.Contain("not you or root"));
        Assert.That(stdout, Is.Empty, "nothing it said is printed");
        Assert.That(foreign.Output, Does.Not.Contain("reload requested"), "the request was never sent");
    }

    [Test]
    public void READY_1_from_a_descendant_re_parented_to_the_supervisor_counts()
    {
        // The inner sh is orphaned at once (its parent, the subshell, exits), so the supervisor (a subreaper)
        // becomes its parent; systemd-notify, its child, is still in the generation's process group. Walking
        // parent pids never reached the generation's leader and refused it.
        const string script = "( sh -c 'sleep 0.3; systemd-notify --ready' & ); exec sleep 600";
        using var supervisor = SupervisorProcess.Start(["--ready-timeout", "30s", "--", "/bin/sh", "-c", script]);
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) is ready \(READY=1 via NOTIFY_SOCKET", TimeSpan.FromSeconds(30));
        Assert.That(supervisor.Output, Does.Not.Contain("dropped a notify message"));
    }

    [Test]
    public void A_control_socket_directory_others_may_write_to_is_refused()
    {
        using var dir = new TempDirectory();
        var open = Directory.CreateDirectory(dir.File("open")).FullName;
        File.SetUnixFileMode(open, (UnixFileMode)0x1FF); // 0777, no sticky bit: anyone could swap the socket
        using var supervisor = SupervisorProcess.Start(["--control", Path.Combine(open, "control.sock"), "--", "/bin/sleep", "600"]);
        Assert.That(supervisor.WaitForExit(TimeSpan.FromSeconds(30)), Is.EqualTo(77));
        Assert.That(supervisor.Output, Does.Contain($"the control socket's directory {open} is writable by others (mode 777) without the sticky bit"));
        Assert.That(File.Exists(Path.Combine(open, "control.sock")), Is.False);
    }

    [Test]
    public void A_unix_listener_gets_the_mode_it_was_given()
    {
        // Set at bind (under a umask), no longer by a chmod on the path afterwards.
        using var dir = new TempDirectory();
        var socket = dir.File("app.sock");
        using var supervisor = SupervisorProcess.Start(["--listen", $"unix:{socket},mode=0640", "--ready", "delay:100ms", "--", "/bin/sleep", "600"]);
        supervisor.WaitForReady(1);
        Assert.That(File.GetUnixFileMode(socket) & (UnixFileMode)0x1FF, Is.EqualTo((UnixFileMode)Convert.ToInt32("640", 8)));
    }

    [Test]
    public void The_runtimes_variables_reach_the_children_but_not_the_supervisor()
    {
        // A unit that sets DOTNET_gcServer=1 for its app used to give the supervisor a server GC as well.
        using var supervisor = SupervisorProcess.Start(["--ready", "delay:100ms", "--", "/bin/sleep", "600"],
            environment: new Dictionary<string, string> { ["DOTNET_gcServer"] = "1", ["COMPlus_GCHeapHardLimit"] = "0x10000000", ["APP_SETTING"] = "kept" });
        var childPid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        var own = Native.Environ(supervisor.Pid);
        Assert.That(own.Keys.Where(k => k.StartsWith("DOTNET_", StringComparison.Ordinal) || k.StartsWith("COMPlus_", StringComparison.Ordinal)), Is.Empty,
            "the supervisor runs without them");
        Assert.That(own["APP_SETTING"], Is.EqualTo("kept"));
        var child = Native.Environ(childPid);
        Assert.That(child["DOTNET_gcServer"], Is.EqualTo("1"));
        Assert.That(child["COMPlus_GCHeapHardLimit"], Is.EqualTo("0x10000000"));
        Assert.That(child["APP_SETTING"], Is.EqualTo("kept"));
        Assert.That(child.ContainsKey("GSUPERVISOR_CHILD_DOTNET"), Is.False);
    }
}
