// Overview
// --------
// A deploy puts what was deployed into service, against the installed native binary: a release switched by
// symlink (Capistrano's layout: current -> releases/N) is where the next generation runs, with --chdir or through
// the logical directory gsupervisor was started in; `reload -- COMMAND` and an edited --env-file reach the next
// generation and stay through a crash restart and an in-place upgrade; a command that cannot run is refused before
// anything starts, and the serving generation goes on. The app is tests/release-app/app.py, copied into each
// release; its answer says which release, directory, variable and arguments it runs with.

using System.Text.Json;

namespace GSupervisor.Tests.Integration;

[TestFixture]
public class DeployTests
{
    private const int SIGKILL = 9;
    private static readonly TimeSpan Long = TimeSpan.FromSeconds(60);
    private static string App => Path.Combine(Paths.Root, "tests/release-app/app.py");

    /// <summary>dir/app: releases/1 .. releases/N, each with app.py and release.txt ("r1", ...), and current -> releases/1.</summary>
    private static string Releases(TempDirectory dir, int count = 2)
    {
        var root = dir.File("app");
        for (var i = 1; i <= count; i++)
        {
            var release = Path.Combine(root, "releases", i.ToString(System.Globalization.CultureInfo.InvariantCulture));
            Directory.CreateDirectory(release);
            File.Copy(App, Path.Combine(release, "app.py"));
            File.WriteAllText(Path.Combine(release, "release.txt"), $"r{i}\n");
        }
        Switch(root, 1);
        return root;
    }

    /// <summary>`ln -sfn releases/N current`, as a deploy does it.</summary>
    private static void Switch(string root, int release)
    {
        var (code, output) = Command.Run("ln", ["-sfn", $"releases/{release}", "current"], workingDirectory: root);
        Assert.That(code, Is.EqualTo(0), output);
    }

    /// <summary>The app's answer as its key=value lines.</summary>
    private static Dictionary<string, string> Answer(int port) =>
        Http.Get(port).Split('\n').Select(l => l.Split('=', 2)).ToDictionary(p => p[0], p => p.Length > 1 ? p[1] : "");

    private static Dictionary<string, string> AnswerFrom(int port, int generation)
    {
        Dictionary<string, string> answer = [];
        Poll.Until(() => (answer = Answer(port))["gen"] == generation.ToString(System.Globalization.CultureInfo.InvariantCulture),
            TimeSpan.FromSeconds(10), $"an answer from generation {generation}");
        return answer;
    }

    private static (int Code, string Stdout, string Stderr) Reload(SupervisorProcess supervisor, params string[] command) =>
        Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath, .. command.Length > 0 ? ["--", .. command] : Array.Empty<string>()]);

    private static JsonElement Status(SupervisorProcess supervisor)
    {
        var (code, stdout, stderr) = Verb.Run(["status", "--json", "--control", supervisor.ControlPath]);
        Assert.That(code, Is.EqualTo(0), stderr);
        return JsonDocument.Parse(stdout).RootElement.Clone();
    }

    private static List<string> Strings(JsonElement array) => array.EnumerateArray().Select(e => e.GetString()!).ToList();

    /// <summary>Switches to release 2 and reloads, then back to release 1 (a rollback of the deploy) and reloads.</summary>
    private static void DeployAndRollBack(SupervisorProcess supervisor, int port, string root)
    {
        var first = Answer(port);
        Assert.That(first["release"], Is.EqualTo("r1"));
        Assert.That(first["cwd"], Is.EqualTo(Path.Combine(root, "releases/1")));

        Switch(root, 2);
        var (code, stdout, stderr) = Reload(supervisor);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("generation 2"));
        var second = AnswerFrom(port, 2);
        Assert.That(second["release"], Is.EqualTo("r2"), "the relative release.txt of the new release");
        Assert.That(second["cwd"], Is.EqualTo(Path.Combine(root, "releases/2")));
        var generation = Status(supervisor).GetProperty("generations").EnumerateArray().Single(g => g.GetProperty("generation").GetInt32() == 2);
        Assert.That(generation.GetProperty("directory").GetString(), Is.EqualTo(Path.Combine(root, "releases/2")), "status shows where it runs");

        Switch(root, 1);
        Assert.That(Reload(supervisor).Code, Is.EqualTo(0));
        Assert.That(AnswerFrom(port, 3)["release"], Is.EqualTo("r1"), "and back again");
    }

    [Test]
    public void A_release_switched_by_symlink_is_what_the_next_generation_runs_with_chdir()
    {
        using var dir = new TempDirectory();
        var root = Releases(dir);
        // Started elsewhere: --chdir names the release directory, resolved again at each start.
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--chdir", Path.Combine(root, "current"), "--", "python3", "app.py"],
            workingDirectory: dir.Path);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        DeployAndRollBack(supervisor, port, root);
        Assert.That(Status(supervisor).GetProperty("directoryRule").GetString(), Does.StartWith(Path.Combine(root, "current") + " as it resolves at each start (--chdir)"));
        var text = Verb.Run(["status", "--control", supervisor.ControlPath]).Stdout;
        Assert.That(text, Does.Contain($"runs python3 app.py  in {Path.Combine(root, "releases/1")}"));
    }

    [Test]
    public void A_release_switched_by_symlink_is_followed_through_the_directory_a_shell_started_gsupervisor_in()
    {
        using var dir = new TempDirectory();
        var root = Releases(dir);
        // As a shell in /srv/app/current starts it: the working directory is the resolved release, PWD the link.
        var current = Path.Combine(root, "current");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", "python3", "app.py"],
            workingDirectory: current, environment: new Dictionary<string, string> { ["PWD"] = current });
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        supervisor.WaitForLine($"each generation starts in {current} as it resolves then");
        DeployAndRollBack(supervisor, port, root);
    }

    [Test]
    public void Without_a_logical_directory_the_children_start_where_gsupervisor_is()
    {
        using var dir = new TempDirectory();
        var root = Releases(dir);
        // PWD names another directory than the working directory: it is not believed, nothing is followed.
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", "python3", "app.py"],
            workingDirectory: Path.Combine(root, "releases/1"), environment: new Dictionary<string, string> { ["PWD"] = dir.Path });
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        Switch(root, 2);
        Assert.That(Reload(supervisor).Code, Is.EqualTo(0));
        Assert.That(AnswerFrom(port, 2)["release"], Is.EqualTo("r1"), "the directory gsupervisor runs in");
        Assert.That(Status(supervisor).GetProperty("directoryRule").GetString(), Does.EndWith("(gsupervisor's own)"));
    }

    [Test]
    public void A_new_command_and_an_edited_environment_file_reach_the_next_generation_and_stay_through_a_crash_restart_and_an_upgrade()
    {
        using var dir = new TempDirectory();
        var root = Releases(dir);
        var envFile = dir.File("app.env");
        File.WriteAllText(envFile, "# the app's variables\nGREETING=hello\n");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--env-file", envFile, "--chdir", Path.Combine(root, "current"),
            "--", "python3", "app.py", "v1"]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);
        var first = Answer(port);
        Assert.That((first["args"], first["greeting"]), Is.EqualTo(("v1", "hello")));

        // The deploy: a new command and a new variable; the next generation has both.
        File.WriteAllText(envFile, "GREETING=\"hello again\"\n");
        var (code, _, stderr) = Reload(supervisor, "python3", "app.py", "v2", "with space");
        Assert.That(code, Is.EqualTo(0), stderr);
        var second = AnswerFrom(port, 2);
        Assert.That((second["args"], second["greeting"]), Is.EqualTo(("v2 with space", "hello again")));
        var status = Status(supervisor);
        Assert.That(Strings(status.GetProperty("command")), Is.EqualTo(new[] { "python3", "app.py", "v2", "with space" }));
        Assert.That(Strings(status.GetProperty("generations")[0].GetProperty("command")), Is.EqualTo(new[] { "python3", "app.py", "v2", "with space" }));
        Assert.That(status.GetProperty("envFile").GetString(), Is.EqualTo(envFile));
        supervisor.WaitForLine("generation 2 serves with the command `python3 app.py v2 with space`; later reloads, restarts and upgrades run it");

        // A crash: the replacement runs the new command, with the file as it is now.
        File.WriteAllText(envFile, "GREETING=after-crash\n");
        Assert.That(Native.Kill(supervisor.WaitForGenerationPid(2), SIGKILL), Is.EqualTo(0));
        var restarted = AnswerFrom(port, 3);
        Assert.That((restarted["args"], restarted["greeting"]), Is.EqualTo(("v2 with space", "after-crash")));

        // An in-place upgrade carries the command; a plain reload after it runs it.
        var (upgraded, _, upgradeError) = Verb.Run(["upgrade", "--wait", "--control", supervisor.ControlPath]);
        Assert.That(upgraded, Is.EqualTo(0), upgradeError);
        Assert.That(Strings(Status(supervisor).GetProperty("command")), Is.EqualTo(new[] { "python3", "app.py", "v2", "with space" }));
        Assert.That(Strings(Status(supervisor).GetProperty("generations")[0].GetProperty("command")), Has.Count.EqualTo(4), "each generation's start, carried");
        File.WriteAllText(envFile, "GREETING=after-upgrade\n");
        Assert.That(Reload(supervisor).Code, Is.EqualTo(0));
        var afterUpgrade = AnswerFrom(port, 4);
        Assert.That((afterUpgrade["args"], afterUpgrade["greeting"]), Is.EqualTo(("v2 with space", "after-upgrade")));
    }

    [Test]
    public void A_new_command_that_never_serves_is_not_kept()
    {
        using var dir = new TempDirectory();
        var root = Releases(dir);
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--chdir", Path.Combine(root, "current"), "--", "python3", "app.py", "v1"]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);

        // python3 is there, so the reload starts; the script is not, so generation 2 exits before it is ready.
        var (code, _, stderr) = Reload(supervisor, "python3", "missing.py");
        Assert.That(code, Is.EqualTo(1), stderr);
        Assert.That(stderr, Does.Contain("reload failed: generation 2").And.Contain("missing.py"));
        Assert.That(AnswerFrom(port, 1)["args"], Is.EqualTo("v1"));
        Assert.That(Strings(Status(supervisor).GetProperty("command")), Is.EqualTo(new[] { "python3", "app.py", "v1" }));

        Assert.That(Reload(supervisor).Code, Is.EqualTo(0));
        Assert.That(AnswerFrom(port, 3)["args"], Is.EqualTo("v1"), "a plain reload runs the command that served");
    }

    [Test]
    public void A_command_or_environment_file_that_cannot_work_is_refused_before_anything_starts()
    {
        using var dir = new TempDirectory();
        var root = Releases(dir);
        var envFile = dir.File("app.env");
        File.WriteAllText(envFile, "GREETING=hello\n");
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--env-file", envFile, "--chdir", Path.Combine(root, "current"),
            "--", "python3", "app.py"]);
        var port = supervisor.WaitForPort();
        var servingPid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);

        void Refused(string[] command, int exitCode, string why)
        {
            var (code, stdout, stderr) = Reload(supervisor, command);
            Assert.That(code, Is.EqualTo(exitCode), stderr);
            Assert.That(stdout, Is.Empty);
            Assert.That(stderr.TrimEnd().Split('\n'), Has.Length.EqualTo(1), "one line");
            Assert.That(stderr, Does.StartWith("gsupervisor: reload refused: ").And.Contain(why).And.EndWith($"generation 1 (pid {servingPid}) serves on\n"));
        }

        Refused(["no-such-command", "x"], 127, "command not found: no-such-command");
        Refused(["./app.py"], 126, "is not executable"); // app.py is the release's file, mode 644
        Refused(["dotnet", "App.dll"], 127, $"App.dll does not exist in {Path.Combine(root, "releases/1")}");
        File.WriteAllText(envFile, "GREETING='never closed\n");
        Refused([], 65, $"--env-file {envFile}, line 1: a quote opened here is never closed");
        File.WriteAllText(envFile, "GREETING=hello\n");
        Switch(root, 9); // a release that is not there
        Refused([], 66, $"--chdir {Path.Combine(root, "current")} does not resolve to a directory");

        // Nothing started, nothing stopped: generation 1 serves, and the next reload is generation 2.
        Assert.That(supervisor.Output, Does.Not.Contain("generation 2"));
        Assert.That(Native.IsAlive(servingPid), Is.True);
        Assert.That(AnswerFrom(port, 1)["release"], Is.EqualTo("r1"));
        var status = Status(supervisor);
        Assert.That(status.GetProperty("lastRefusedReload").GetProperty("reason").GetString(), Does.Contain("does not resolve"));
        Assert.That(Verb.Run(["status", "--control", supervisor.ControlPath]).Stdout, Does.Contain("last reload: refused"));
        Switch(root, 2);
        Assert.That(Reload(supervisor).Code, Is.EqualTo(0));
        Assert.That(AnswerFrom(port, 2)["release"], Is.EqualTo("r2"));
    }

    [Test]
    public void Reload_says_which_options_need_a_restart()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.TestChild]);
        supervisor.WaitForReady(1);
        foreach (var option in new[] { "--listen", "--stop-timeout", "--env-file" })
        {
            var (code, stdout, stderr) = Verb.Run(["reload", option, "x", "--control", supervisor.ControlPath]);
            Assert.That(code, Is.EqualTo(64), stderr);
            Assert.That(stdout, Is.Empty);
            Assert.That(stderr, Does.StartWith($"gsupervisor: reload: {option} is set when gsupervisor starts and a reload cannot change it").And.Contain("restart gsupervisor"));
        }
        Assert.That(supervisor.Output, Does.Not.Contain("generation 2"), "nothing was reloaded");
    }

    [Test]
    public void A_first_start_refuses_what_a_reload_refuses()
    {
        using var dir = new TempDirectory();
        var (code, output) = Command.Run(Paths.Supervisor, ["--listen", "127.0.0.1:0", "--", "dotnet", "App.dll"], workingDirectory: dir.Path);
        Assert.That(code, Is.EqualTo(127), output);
        Assert.That(output, Does.Contain($"gsupervisor: cannot run `dotnet App.dll`: App.dll does not exist in {dir.Path}"));
        (code, output) = Command.Run(Paths.Supervisor, ["--listen", "127.0.0.1:0", "--env-file", dir.File("missing.env"), "--", "true"], workingDirectory: dir.Path);
        Assert.That(code, Is.EqualTo(66), output);
        Assert.That(output, Does.Contain($"cannot read --env-file {dir.File("missing.env")}"));
    }
}
