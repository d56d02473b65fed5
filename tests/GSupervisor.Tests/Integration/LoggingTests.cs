// Overview
// --------
// The supervisor's own log formats (--log-format) against the native binary: JSON lines that parse, each with
// timestamp, level and message plus the event's fields; the journal's format (priority prefix, no timestamp) when
// stderr is the stream JOURNAL_STREAM names; and the children's output relayed byte for byte in every format.
// Under a real journal, `journalctl -p err` is tested in PackagedUnitTests.

using System.Text.Json;
using System.Text.RegularExpressions;

namespace GSupervisor.Tests.Integration;

[TestFixture]
public class LoggingTests
{
    /// <summary>A child line that looks like neither format, printed once by every generation.</summary>
    private const string ChildLine = "child says <3> {\"not\": json} \t tab";

    private static string[] Child(string argsFile) =>
        ["--", "/bin/sh", "-c", $"printf '%s\\n' '{ChildLine}'; if [ -e {argsFile}.$GSUPERVISOR_GENERATION ]; then exit 3; fi; exec sleep 600"];

    [Test]
    public void Json_lines_parse_with_timestamp_level_message_and_the_events_fields()
    {
        using var dir = new TempDirectory();
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--log-format", "json", "--ready", "delay:200ms", .. Child(dir.File("fail"))]);
        supervisor.WaitForReady(1);
        Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]).Code, Is.EqualTo(0));
        File.WriteAllText(dir.File("fail.3"), "");
        Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]).Code, Is.EqualTo(1));
        supervisor.Signal(15);
        Assert.That(supervisor.WaitForExit(TimeSpan.FromSeconds(30)), Is.EqualTo(0));

        var own = supervisor.Lines.Where(l => l.StartsWith('{')).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.That(own, Has.Count.GreaterThan(10));
        foreach (var line in own)
        {
            Assert.That(DateTimeOffset.TryParse(line.GetProperty("timestamp").GetString(), out _), Is.True, line.ToString());
            Assert.That(line.GetProperty("level").GetString(), Is.AnyOf("debug", "info", "warning", "error", "fatal"));
            Assert.That(line.GetProperty("message").GetString(), Is.Not.Empty);
        }
        var succeeded = own.Single(l => l.GetProperty("message").GetString()!.StartsWith("reload succeeded"));
        Assert.That((succeeded.GetProperty("level").GetString(), succeeded.GetProperty("result").GetString(), succeeded.GetProperty("generation").GetInt32()),
            Is.EqualTo(("info", "succeeded", 2)));
        var failed = own.Single(l => l.GetProperty("message").GetString()!.StartsWith("reload failed"));
        Assert.That((failed.GetProperty("level").GetString(), failed.GetProperty("generation").GetInt32()), Is.EqualTo(("error", 3)));
        var started = own.First(l => Regex.IsMatch(l.GetProperty("message").GetString()!, @"^generation 2 \(pid \d+\) started"));
        Assert.That(started.GetProperty("pid").GetInt32(), Is.GreaterThan(0), "a line about a generation names it and its pid");
        Assert.That(supervisor.Lines.Count(l => l == ChildLine), Is.EqualTo(3), "each generation's output, byte for byte");
        Assert.That(supervisor.Lines.Where(l => !l.StartsWith('{')), Is.All.EqualTo(ChildLine), "nothing else is outside JSON");
    }

    [Test]
    public void Under_the_journal_lines_carry_their_priority_and_no_timestamp()
    {
        // JOURNAL_STREAM names stderr's device and inode, as systemd sets it for StandardError=journal.
        using var dir = new TempDirectory();
        string[] child = Child(dir.File("fail"));
        // sh -c COMMAND GSUPERVISOR: the harness passes the binary as $0.
        var command = "export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec \"$0\" --listen 127.0.0.1:0 --ready delay:200ms -- " +
            string.Join(' ', child.Skip(1).Select(a => "'" + a.Replace("'", "'\\''") + "'"));
        using var supervisor = SupervisorProcess.Start([], program: "/bin/sh", prefix: ["-c", command]);
        supervisor.WaitForReady(1);
        File.WriteAllText(dir.File("fail.2"), "");
        Assert.That(Verb.Run(["reload", "--wait", "--control", supervisor.ControlPath]).Code, Is.EqualTo(1));
        supervisor.Signal(15);
        supervisor.WaitForExit(TimeSpan.FromSeconds(30));

        var own = supervisor.Lines.Where(l => l != ChildLine).ToList();
        Assert.That(own, Is.Not.Empty);
        Assert.That(own, Is.All.Match(@"^<[2-7]>"), "every line of the supervisor's own starts with its priority");
        Assert.That(own, Has.Some.Match(@"^<6>generation 1 \(pid \d+\) is ready"), "routine: info, no timestamp");
        Assert.That(own, Has.Some.Match(@"^<3>reload failed: generation 2"), "a failed reload: err");
        Assert.That(supervisor.Lines.Count(l => l == ChildLine), Is.EqualTo(2), "the children's output is relayed as it is");
    }
}
