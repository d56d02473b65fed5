using System.Net;
using System.Net.Sockets;

namespace GSupervisor.Tests.Integration;

/// <summary>Bad input: one line naming the problem, a distinct exit code, and no child started.</summary>
[TestFixture]
public class BadInputTests
{
    private TempDirectory _dir = null!;
    private string _marker = null!;

    [SetUp]
    public void SetUp()
    {
        _dir = new TempDirectory();
        _marker = _dir.File("child-ran");
    }

    [TearDown]
    public void TearDown() => _dir.Dispose();

    /// <summary>A command that would leave a mark if it ever ran.</summary>
    private string[] MarkingChild => ["--", "/bin/sh", "-c", $"touch {_marker}"];

    private (int Code, IReadOnlyList<string> Lines) Run(params string[] args)
    {
        using var supervisor = SupervisorProcess.Start(args);
        var code = supervisor.WaitForExit(TimeSpan.FromSeconds(30));
        return (code, supervisor.Lines.Where(l => l.Length > 0).ToList());
    }

    private void AssertRefused(string[] args, int expectedCode, string expectedText)
    {
        var (code, lines) = Run(args);
        Assert.That(code, Is.EqualTo(expectedCode), string.Join("\n", lines));
        Assert.That(lines, Has.Count.EqualTo(1), "exactly one line");
        Assert.That(lines[0], Does.StartWith("gsupervisor: ").And.Contain(expectedText));
        Assert.That(File.Exists(_marker), Is.False, "no child ran");
    }

    [TestCase(new[] { "--bogus" }, "unknown option '--bogus'")]
    [TestCase(new[] { "--listen", "nope:80" }, "'nope' is not an IP address")]
    [TestCase(new[] { "--listen", ":70000" }, "not a number from 0 to 65535")]
    [TestCase(new[] { "--listen", "[::zz]:80" }, "not an IPv6 address")]
    [TestCase(new[] { "--listen", "" }, "needs an address")]
    [TestCase(new[] { "--listen", ":8080", "--listen", ":8080" }, "same address")]
    [TestCase(new[] { "--ready", "sometimes" }, "not a readiness mode")]
    [TestCase(new[] { "--ready", "delay:soon" }, "not a number with a unit")]
    [TestCase(new[] { "--stop-timeout", "5" }, "needs a unit")]
    [TestCase(new[] { "--probation", "5" }, "--probation: duration '5' needs a unit")]
    [TestCase(new[] { "--log-format", "xml" }, "--log-format 'xml' is not a format; use auto, text or json")]
    [TestCase(new[] { "--metrics", "nope:80" }, "--metrics: ")]
    [TestCase(new[] { "--metrics", "systemd" }, "give an address of its own")]
    [TestCase(new[] { "--listen", "127.0.0.1:9464", "--metrics", "127.0.0.1:9464" }, "asks for an address a --listen has too")]
    [TestCase(new[] { "--ready-timeout", "0s" }, "must be more than 0")]
    [TestCase(new[] { "--stop-signal", "SIGFOO" }, "unknown signal 'SIGFOO'")]
    [TestCase(new[] { "--log-level", "loud" }, "not a level")]
    [TestCase(new[] { "--backlog", "0" }, "out of range")]
    [TestCase(new[] { "--ready", "delay:1s", "--ready-timeout", "5s" }, "applies to --ready notify only")]
    [TestCase(new[] { "--group", "nogroup" }, "--group needs --user")]
    [TestCase(new[] { "--user", "no-such-user-gsv" }, "no such user")]
    [TestCase(new[] { "--control", "relative.sock" }, "must be an absolute path")]
    [TestCase(new[] { "--listen", "systemd:" }, "systemd:NAME")]
    [TestCase(new[] { "--listen", ":-1" }, "not a number from 0 to 65535")]
    [TestCase(new[] { "--listen", "unix:" }, "path is empty")]
    [TestCase(new[] { "--listen", "1.2.3:80" }, "not an IP address")]
    [TestCase(new[] { "--listen", "[::1]80" }, "an IPv6 address is written [ADDRESS]:PORT")]
    [TestCase(new[] { "--listen", "web=:8080", "--listen", "web=:8081" }, "have the same name 'web'")]
    [TestCase(new[] { "--restart-delay", "0s" }, "must be more than 0")]
    [TestCase(new[] { "--restart-delay", "5s", "--restart-max-delay", "1s" }, "less than --restart-delay")]
    [TestCase(new[] { "--no-restart", "--restart-max-delay", "1m" }, "conflict with --no-restart")]
    public void Usage_errors_exit_64(string[] options, string message) =>
        AssertRefused([.. options, .. MarkingChild], 64, message);

    [Test]
    public void Missing_command_exits_64() => AssertRefused(["--listen", ":0"], 64, "no command to run; put it after '--'");

    [Test]
    public void Command_without_dashdash_gets_a_hint() =>
        AssertRefused(["--listen", "dotnet", "app.dll"], 64, "put '--' before it");

    [Test]
    public void Command_not_found_exits_127()
    {
        AssertRefused(["--", "/nonexistent/app"], 127, "command not found: /nonexistent/app");
        AssertRefused(["--", "no-such-command-gsv"], 127, "command not found: no-such-command-gsv (searched PATH)");
    }

    [Test]
    public void Command_not_executable_exits_126()
    {
        var file = _dir.File("not-executable");
        File.WriteAllText(file, "#!/bin/sh\n");
        AssertRefused(["--", file], 126, "is not executable");
        AssertRefused(["--", _dir.Path], 126, "is a directory");
    }

    [Test]
    public void Address_in_use_exits_69()
    {
        using var holder = new TcpListener(IPAddress.Loopback, 0);
        holder.Start();
        var port = ((IPEndPoint)holder.LocalEndpoint).Port;
        AssertRefused(["--listen", $"127.0.0.1:{port}", .. MarkingChild], 69, "already in use");
    }

    [Test]
    public void Address_not_on_this_host_exits_69() =>
        AssertRefused(["--listen", "192.0.2.1:0", .. MarkingChild], 69, "not available on this host");

    [Test]
    public void Unix_socket_in_a_missing_directory_exits_73() =>
        AssertRefused(["--listen", $"unix:{_dir.File("missing/app.sock")}", .. MarkingChild], 73, "does not exist");

    [Test]
    public void Unix_socket_path_longer_than_a_socket_address_exits_64() =>
        AssertRefused(["--listen", $"unix:{_dir.File(new string('s', 120))}", .. MarkingChild], 64, "longer than the 107 a socket address holds");

    [Test]
    public void Control_socket_in_a_missing_directory_tree_exits_73_and_creates_nothing()
    {
        AssertRefused(["--listen", ":0", "--control", _dir.File("no/such/control.sock"), .. MarkingChild], 73, "does not exist");
        Assert.That(Directory.Exists(_dir.File("no")), Is.False, "no directories made on the way");
    }

    [Test]
    public void Port_0_binds_a_port_the_kernel_chooses_and_says_so()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--ready", "delay:1ms", "--", "/bin/sleep", "600"]);
        var line = supervisor.WaitForLine(@"listening on 127\.0\.0\.1:(\d+) .*port 0 was given, so the kernel chose this port");
        Assert.That(int.Parse(line.Groups[1].Value), Is.GreaterThan(0));
    }

    [Test]
    public void Unix_socket_path_taken_by_a_regular_file_exits_73()
    {
        var path = _dir.File("file.sock");
        File.WriteAllText(path, "");
        AssertRefused(["--listen", $"unix:{path}", .. MarkingChild], 73, "exists and is not a socket");
        Assert.That(File.Exists(path), Is.True, "the file is left alone");
    }

    [Test]
    public void Live_unix_socket_of_another_process_is_not_stolen()
    {
        var path = _dir.File("live.sock");
        using var live = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        live.Bind(new UnixDomainSocketEndPoint(path));
        live.Listen();
        AssertRefused(["--listen", $"unix:{path}", .. MarkingChild], 69, "another process is accepting");
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(path)); // still the other process's socket
    }

    [Test]
    public void Privileged_port_without_rights_exits_77()
    {
        // As root, drop to nobody for the supervisor itself; as any other user, run it directly.
        var asNobody = Native.GetEffectiveUserId() == 0;
        var arguments = new[] { "--listen", "127.0.0.1:80", "--", "/bin/true" };
        using var supervisor = asNobody
            ? SupervisorProcess.Start(arguments, program: "/usr/bin/setpriv",
                prefix: ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-net_bind_service"],
                environment: new Dictionary<string, string> { ["HOME"] = "/tmp", ["DOTNET_CLI_HOME"] = "/tmp" })
            : SupervisorProcess.Start(arguments);
        var code = supervisor.WaitForExit(TimeSpan.FromSeconds(30));
        Assert.That(code, Is.EqualTo(77), supervisor.Output);
        Assert.That(supervisor.Output, Does.Contain("permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE"));
    }

    [Test]
    public void Help_and_version_exit_0_on_stdout()
    {
        var (code, lines) = Run("--version");
        Assert.That(code, Is.EqualTo(0));
        Assert.That(lines.Single(), Does.Match(@"^gsupervisor \d+\.\d+\.\d+$"));
        (code, lines) = Run("--help");
        Assert.That(code, Is.EqualTo(0));
        Assert.That(string.Join("\n", lines), Does.Contain("--listen").And.Contain("--ready-timeout").And.Contain("SIGUSR2"));
    }
}
