using System.Net;
using System.Text;
using GSupervisor.Core;

namespace GSupervisor.Tests.Unit;

public class ParsingTests
{
    [TestCase("500ms", 500)]
    [TestCase("2s", 2000)]
    [TestCase("1.5s", 1500)]
    [TestCase("1m", 60_000)]
    [TestCase("1m30s", 90_000)]
    [TestCase("1h", 3_600_000)]
    [TestCase("0s", 0)]
    public void Durations_parse(string text, int milliseconds)
    {
        Assert.That(Duration.TryParse(text, out var value, out var error), Is.True, error);
        Assert.That(value, Is.EqualTo(TimeSpan.FromMilliseconds(milliseconds)));
    }

    [TestCase("", "empty")]
    [TestCase("5", "needs a unit")]
    [TestCase("5x", "unknown unit 'x'")]
    [TestCase("-1s", "not a number")]
    [TestCase("s", "not a number")]
    [TestCase("2d", "unknown unit 'd'")]
    [TestCase("25h", "longer than a day")]
    public void Bad_durations_say_why(string text, string why)
    {
        Assert.That(Duration.TryParse(text, out _, out var error), Is.False);
        Assert.That(error, Does.Contain(why));
    }

    [TestCase(":8080", ListenKind.TcpAnyAddress, null, 8080)]
    [TestCase("*:80", ListenKind.TcpAnyAddress, null, 80)]
    [TestCase("127.0.0.1:0", ListenKind.Tcp, "127.0.0.1", 0)]
    [TestCase("localhost:9000", ListenKind.Tcp, "127.0.0.1", 9000)]
    [TestCase("[::1]:443", ListenKind.Tcp, "::1", 443)]
    [TestCase("[fe80::1%1]:443", ListenKind.Tcp, "fe80::1%1", 443)]
    public void Tcp_listen_specs_parse(string text, ListenKind kind, string? address, int port)
    {
        Assert.That(ListenSpec.TryParse(text, out var spec, out var error), Is.True, error);
        Assert.That(spec!.Kind, Is.EqualTo(kind));
        Assert.That(spec.Address, Is.EqualTo(address is null ? null : IPAddress.Parse(address)));
        Assert.That(spec.Port, Is.EqualTo(port));
        Assert.That(spec.Name, Is.Null);
        Assert.That(spec.FdName, Is.EqualTo("unknown"));
    }

    [Test]
    public void Names_and_unix_sockets_parse()
    {
        Assert.That(ListenSpec.TryParse("web=:8080", out var web, out _), Is.True);
        Assert.That((web!.Name, web.Port), Is.EqualTo(("web", 8080)));
        Assert.That(ListenSpec.TryParse("admin=unix:/run/app/admin.sock,mode=0660", out var unix, out var error), Is.True, error);
        Assert.That((unix!.Name, unix.UnixPath, unix.UnixMode), Is.EqualTo(("admin", "/run/app/admin.sock", (int?)0x1B0)));
        Assert.That(ListenSpec.TryParse("unix:@gsupervisor-test", out var abstractSpec, out _), Is.True);
        Assert.That(abstractSpec!.UnixPath, Is.EqualTo("@gsupervisor-test"));
    }

    [TestCase("", "needs an address")]
    [TestCase("8080", "give a port")]
    [TestCase(":", "port is missing")]
    [TestCase(":70000", "not a number from 0 to 65535")]
    [TestCase(":-1", "not a number from 0 to 65535")]
    [TestCase(":http", "not a number from 0 to 65535")]
    [TestCase("example.com:80", "not an IP address")]
    [TestCase("1.2.3:80", "not an IP address")]
    [TestCase("::1:80", "in brackets")]
    [TestCase("[::g]:80", "not an IPv6 address")]
    [TestCase("[::1]80", "[ADDRESS]:PORT")]
    [TestCase("dotnet", "put '--' before it")]
    [TestCase("=:80", "name before '=' is empty")]
    [TestCase("we b=:80", "may hold only")]
    [TestCase("unknown=:80", "reserved")]
    [TestCase("unix:", "path is empty")]
    [TestCase("unix:relative.sock", "must be absolute")]
    [TestCase("unix:/tmp/", "names a directory")]
    [TestCase("unix:/tmp/a.sock,mode=999", "not an octal file mode")]
    [TestCase("unix:@abs,mode=0600", "abstract sockets have no file mode")]
    public void Bad_listen_specs_say_why(string text, string why)
    {
        Assert.That(ListenSpec.TryParse(text, out _, out var error), Is.False);
        Assert.That(error, Does.Contain(why));
        Assert.That(error, Does.Not.Contain('\n'));
    }

    [Test]
    public void Unix_path_longer_than_a_socket_address_is_refused()
    {
        var path = "/tmp/" + new string('a', 103);
        Assert.That(ListenSpec.TryParse("unix:" + path, out _, out var error), Is.False);
        Assert.That(error, Does.Contain("108 bytes").Or.Contain("longer than the 107"));
        Assert.That(ListenSpec.TryParse("unix:/tmp/" + new string('a', 102), out _, out _), Is.True);
    }

    [TestCase(new[] { ":8080", "127.0.0.1:8080" }, "same address")]
    [TestCase(new[] { "a=:8080", "a=:8081" }, "same name 'a'")]
    [TestCase(new[] { "unix:/tmp/x.sock", "unix:/tmp/x.sock" }, "same address")]
    public void Conflicting_listeners_are_refused(string[] texts, string why)
    {
        var specs = texts.Select(t => { ListenSpec.TryParse(t, out var s, out _); return s!; }).ToList();
        Assert.That(ListenSpec.TryValidateSet(specs, out var error), Is.False);
        Assert.That(error, Does.Contain(why));
    }

    [Test]
    public void Two_ephemeral_ports_do_not_conflict()
    {
        var specs = new[] { "127.0.0.1:0", "127.0.0.1:0" }.Select(t => { ListenSpec.TryParse(t, out var s, out _); return s!; }).ToList();
        Assert.That(ListenSpec.TryValidateSet(specs, out _), Is.True);
    }

    [TestCase("SIGTERM", 15)]
    [TestCase("term", 15)]
    [TestCase("INT", 2)]
    [TestCase("3", 3)]
    [TestCase("SIGKILL", 9)]
    public void Stop_signals_parse(string text, int signal)
    {
        Assert.That(Signals.TryParseStopSignal(text, out var parsed, out var error), Is.True, error);
        Assert.That(parsed, Is.EqualTo(signal));
    }

    [TestCase("SIGFOO", "unknown signal")]
    [TestCase("0", "unknown signal")]
    [TestCase("SIGSEGV", "cannot be used as a stop signal")]
    [TestCase("SIGCHLD", "cannot be used as a stop signal")]
    public void Bad_stop_signals_say_why(string text, string why)
    {
        Assert.That(Signals.TryParseStopSignal(text, out _, out var error), Is.False);
        Assert.That(error, Does.Contain(why));
    }

    [Test]
    public void Notify_messages_parse_as_systemd_does()
    {
        Assert.That(NotifyMessage.TryParse("READY=1\nSTATUS=warming up\nbogus\nlower=1\n"u8, out var m, out _), Is.True);
        Assert.That(m!.Ready, Is.True);
        Assert.That(m.Status, Is.EqualTo("warming up"));
        Assert.That(m.Fields.ContainsKey("lower"), Is.False);
        Assert.That(NotifyMessage.TryParse("READY=0"u8, out m, out _) && !m!.Ready, Is.True);
        Assert.That(NotifyMessage.TryParse("X_GSUPERVISOR_DRAIN=http (injected)\nREADY=1\n"u8, out m, out _) && m!.Drain == "http (injected)", Is.True);
        Assert.That(NotifyMessage.TryParse("STATUS=db down\nWATCHDOG=trigger\n"u8, out m, out _) && m!.FailureReported && m.Status == "db down", Is.True);
        Assert.That(NotifyMessage.TryParse("WATCHDOG=1"u8, out m, out _) && !m!.FailureReported, Is.True, "a watchdog ping is no failure");
    }

    [Test]
    public void Probation_lines_round_trip_and_refuse_what_is_not_one()
    {
        Assert.That(HandoffProtocol.EncodeProbation(TimeSpan.FromSeconds(5)), Is.EqualTo("PROBATION ms=5000"));
        Assert.That(HandoffProtocol.EncodeProbation(TimeSpan.FromTicks(-5)), Is.EqualTo("PROBATION ms=0"));
        Assert.That(HandoffProtocol.TryParseProbation("PROBATION ms=1500", out var left) && left == TimeSpan.FromMilliseconds(1500), Is.True);
        foreach (var line in new[] { "PROBATION", "PROBATION ms=", "PROBATION ms=-1", "PROBATION ms=1e3", "PROBATION_PASSED", "DRAIN" })
            Assert.That(HandoffProtocol.TryParseProbation(line, out _), Is.False, line);
    }

    [TestCase(null, "/h.dll", "/h.dll")]
    [TestCase("", "/h.dll", "/h.dll")]
    [TestCase("/own/a.dll", "/h.dll", "/own/a.dll:/h.dll")]
    [TestCase("/own/a.dll:/h.dll:/own/b.dll", "/h.dll", "/own/a.dll:/own/b.dll:/h.dll")]
    public void The_startup_hook_is_added_after_the_hooks_already_set(string? existing, string hook, string expected) =>
        Assert.That(StartupHooks.Append(existing, hook), Is.EqualTo(expected));

    [Test]
    public void Notify_parser_survives_random_and_oversized_input()
    {
        var random = new Random(7);
        for (var i = 0; i < 20_000; i++)
        {
            var data = new byte[random.Next(0, 6000)];
            random.NextBytes(data);
            if (i % 3 == 0) for (var j = 0; j < data.Length; j++) data[j] = (byte)"READY=1\nSTATUS=\0=\n\xff"[data[j] % 18];
            var ok = NotifyMessage.TryParse(data, out var message, out var error);
            Assert.That(ok ? message is not null : error.Length > 0, Is.True);
        }
        Assert.That(NotifyMessage.TryParse(new byte[NotifyMessage.MaxBytes + 1], out _, out var tooBig), Is.False);
        Assert.That(tooBig, Does.Contain("larger than"));
    }

    [Test]
    public void Control_messages_yield_the_fds_and_credentials_and_stop_at_a_malformed_header()
    {
        static byte[] Message(int level, int type, params int[] values)
        {
            var length = 16 + values.Length * 4;
            var bytes = new byte[(length + 7) & ~7];
            BitConverter.GetBytes((ulong)length).CopyTo(bytes, 0);
            BitConverter.GetBytes(level).CopyTo(bytes, 8);
            BitConverter.GetBytes(type).CopyTo(bytes, 12);
            for (var i = 0; i < values.Length; i++) BitConverter.GetBytes(values[i]).CopyTo(bytes, 16 + i * 4);
            return bytes;
        }
        byte[] control = [.. Message(1, 2, 4242, 1000, 1000), .. Message(1, 1, 7, 8, 9), .. Message(6, 1, 99)];
        var (fds, sender) = ControlMessages.Parse(control);
        Assert.That(fds, Is.EqualTo(new[] { 7, 8, 9 }), "only SOL_SOCKET's SCM_RIGHTS");
        Assert.That(sender, Is.EqualTo(new ControlMessages.Credentials(4242, 1000, 1000)));

        var broken = Message(1, 1, 5);
        BitConverter.GetBytes(4096UL).CopyTo(broken, 0); // a length past the buffer
        Assert.That(ControlMessages.Parse(broken).Fds, Is.Empty);
        Assert.That(ControlMessages.Parse(control.AsSpan(0, 20)).Fds, Is.Empty, "a cut header");
    }

    [Test]
    public void Greeting_carries_names_with_spaces_colons_and_percent_signs()
    {
        string[] names = ["public web", "a:b", "100%", "plain"];
        var line = Encoding.UTF8.GetString(HandoffProtocol.EncodeGreeting(3, names)).TrimEnd('\n');
        Assert.That(line, Does.Not.Contain("public web"), "one field per word of the line");
        Assert.That(HandoffProtocol.TryParseGreeting(line, out var greeting, out var error), Is.True, error);
        Assert.That(greeting!.Names, Is.EqualTo(names));
        Assert.That(greeting.FdCount, Is.EqualTo(4));
    }

    [Test]
    public void Handoff_greeting_round_trips_and_refusals_are_recognised()
    {
        var bytes = HandoffProtocol.EncodeGreeting(7, ["web", "unknown"]);
        var line = Encoding.ASCII.GetString(bytes).TrimEnd('\n');
        Assert.That(HandoffProtocol.TryParseGreeting(line, out var greeting, out _), Is.True);
        Assert.That((greeting!.Generation, greeting.FdCount, greeting.Names), Is.EqualTo((7, 2, (IReadOnlyList<string>)new[] { "web", "unknown" })).Using<(int, int, IReadOnlyList<string>)>((a, b) => a.Item1 == b.Item1 && a.Item2 == b.Item2 && a.Item3.SequenceEqual(b.Item3)));
        Assert.That(HandoffProtocol.TryParseGreeting("ERR not yours", out _, out var error), Is.False);
        Assert.That(error, Does.Contain("refused").And.Contain("not yours"));
        Assert.That(HandoffProtocol.TryParseGreeting("GSUPERVISOR/1 generation=x", out _, out _), Is.False);
    }
}
