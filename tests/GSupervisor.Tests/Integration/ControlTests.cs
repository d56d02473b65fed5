using System.Text.Json;

namespace GSupervisor.Tests.Integration;

/// <summary>`gsupervisor status | reload | stop` against the real daemon.</summary>
[TestFixture]
public class ControlTests
{
    private static SupervisorProcess Start(TempDirectory dir, out int firstPid) =>
        StartWith(dir, out firstPid);

    private static SupervisorProcess StartWith(TempDirectory dir, out int firstPid, params string[] extra)
    {
        var supervisor = SupervisorProcess.Start(["--listen", "web=127.0.0.1:0", .. extra, "--", Paths.TestChild, "--args-file", dir.File("args")]);
        firstPid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        return supervisor;
    }

    [Test]
    public void Status_tells_the_serving_generation_pids_states_and_listeners()
    {
        using var dir = new TempDirectory();
        using var supervisor = Start(dir, out var pid);
        var port = supervisor.WaitForPort();

        var (code, text, _) = Verb.Run(["status", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0));
        Assert.That(text, Does.Contain($"serving: generation 1 (pid {pid})").And.Contain($"127.0.0.1:{port}  name web").And.Contain("last reload: none"));

        (code, var json, _) = Verb.Run(["status", "--json", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0));
        using var doc = JsonDocument.Parse(json);
        var root = doc.RootElement;
        Assert.That(root.GetProperty("serving").GetProperty("generation").GetInt32(), Is.EqualTo(1));
        Assert.That(root.GetProperty("serving").GetProperty("pid").GetInt32(), Is.EqualTo(pid));
        Assert.That(root.GetProperty("pid").GetInt32(), Is.EqualTo(supervisor.Pid));
        Assert.That(root.GetProperty("generations")[0].GetProperty("state").GetString(), Is.EqualTo("ready"));
        Assert.That(root.GetProperty("listeners")[0].GetProperty("address").GetString(), Is.EqualTo($"127.0.0.1:{port}"));

        // Its own footprint, as /proc tells it (the control connection being answered is one more fd).
        var self = root.GetProperty("supervisor");
        var rssKiB = Native.RssKiB(supervisor.Pid);
        Assert.That(self.GetProperty("rssBytes").GetInt64() / 1024, Is.InRange(rssKiB / 2, rssKiB * 2));
        var fds = Directory.GetFileSystemEntries($"/proc/{supervisor.Pid}/fd").Length;
        Assert.That(self.GetProperty("openFds").GetInt32(), Is.InRange(fds, fds + 1));
        Assert.That(self.GetProperty("threads").GetInt32(), Is.GreaterThanOrEqualTo(5));
        Assert.That(self.GetProperty("managedHeapBytes").GetInt64(), Is.GreaterThan(0));
        Assert.That(text, Does.Match(@"supervisor: RSS \d+\.\d MiB, managed heap \d+\.\d MiB \(\d+\.\d MiB committed\), \d+ threads, \d+ fds"));
    }

    [Test]
    public void Reload_wait_returns_0_once_the_new_generation_serves()
    {
        using var dir = new TempDirectory();
        using var supervisor = Start(dir, out _);
        var (code, stdout, stderr) = Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Match(@"reload succeeded: generation 2 \(pid \d+\) is serving"));
        using var doc = JsonDocument.Parse(Verb.Run(["status", "--json", "--control", supervisor.ControlPath]).Stdout);
        Assert.That(doc.RootElement.GetProperty("serving").GetProperty("generation").GetInt32(), Is.EqualTo(2));
        Assert.That(doc.RootElement.GetProperty("lastReload").GetProperty("succeeded").GetBoolean(), Is.True);
    }

    [Test]
    public void Reload_wait_fails_with_the_reason_when_the_new_generation_is_rolled_back()
    {
        using var dir = new TempDirectory();
        using var supervisor = Start(dir, out var firstPid);
        File.WriteAllText(dir.File("args"), "--exit-before-ready 3");
        var (code, _, stderr) = Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain("exited with exit code 3 before it was ready").And.Contain($"generation 1 (pid {firstPid}) keeps serving"));
        Assert.That(stderr, Does.Contain("last output of generation 2:\nTestChild: cannot start: exiting with 3 before ready, as asked"),
            "the tail of the failed child's output");
        supervisor.WaitForLine("^TestChild: cannot start"); // and the output went on to the supervisor's stderr
    }

    [Test]
    public void Reload_wait_gives_up_at_its_timeout_with_75()
    {
        using var dir = new TempDirectory();
        using var supervisor = StartWith(dir, out _, "--ready-timeout", "1m");
        File.WriteAllText(dir.File("args"), "--ready never");
        var (code, _, stderr) = Verb.Run(["reload", "--wait", "--timeout", "500ms", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(75));
        Assert.That(stderr, Does.Contain("no answer").And.Contain("within 500ms"));
    }

    [Test]
    public void Stop_stops_the_daemon()
    {
        using var dir = new TempDirectory();
        using var supervisor = Start(dir, out var pid);
        var (code, stdout, _) = Verb.Run(["stop", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0));
        Assert.That(stdout, Does.Contain("stopping"));
        Assert.That(supervisor.WaitForExit(TimeSpan.FromSeconds(60)), Is.EqualTo(0));
        Assert.That(Native.IsAlive(pid), Is.False);
        Assert.That(File.Exists(supervisor.ControlPath), Is.False, "the control socket is removed");
    }

    [Test]
    public void Verbs_without_a_daemon_say_so_with_69()
    {
        using var dir = new TempDirectory();
        var (code, _, stderr) = Verb.Run(["status", "--control", dir.File("none.sock")]);
        Assert.That(code, Is.EqualTo(69));
        Assert.That(stderr.Trim(), Does.StartWith("gsupervisor: no gsupervisor is running with control socket"));
        Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1));
    }

    [Test]
    public void A_second_daemon_does_not_take_over_a_live_control_socket()
    {
        using var dir = new TempDirectory();
        using var first = Start(dir, out _);
        using var second = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--control", first.ControlPath, "--", "/bin/true"]);
        Assert.That(second.WaitForExit(TimeSpan.FromSeconds(30)), Is.EqualTo(69));
        Assert.That(second.Output, Does.Contain("another gsupervisor is running with control socket"));
        Assert.That(Verb.Run(["status", "--control", first.ControlPath]).Code, Is.EqualTo(0), "the first still answers");
    }

    [Test]
    public void Control_socket_is_0600_in_a_0700_directory()
    {
        using var dir = new TempDirectory();
        using var supervisor = Start(dir, out _);
        Assert.That(File.GetUnixFileMode(supervisor.ControlPath), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite), "socket 0600");
        Assert.That(File.GetUnixFileMode(Path.GetDirectoryName(supervisor.ControlPath)!),
            Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute), "directory 0700");
    }

    [Test]
    public void Another_user_is_refused()
    {
        // Besides the modes above, the daemon checks SO_PEERCRED.
        Assert.That(Native.GetEffectiveUserId(), Is.EqualTo(0u), "acting as another user needs root (CI runs as root)");
        using var dir = new TempDirectory();
        using var supervisor = Start(dir, out _);
        var (code, _, stderr) = Verb.Run(["status", "--control", supervisor.ControlPath], asUser: "65534");
        Assert.That(code, Is.EqualTo(77), stderr);
        Assert.That(stderr, Does.Contain("permission denied on control socket"));
    }
}
