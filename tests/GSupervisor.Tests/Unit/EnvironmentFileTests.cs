using GSupervisor.Core;

namespace GSupervisor.Tests.Unit;

/// <summary>--env-file reads systemd's EnvironmentFile= syntax: what systemd takes, gsupervisor takes the same way.</summary>
public class EnvironmentFileTests
{
    private static Dictionary<string, string> Parse(string text)
    {
        Assert.That(EnvironmentFile.TryParse(text, out var contents, out var error), Is.True, error);
        return contents!.Variables.ToDictionary(v => v.Key, v => v.Value);
    }

    [Test]
    public void Plain_assignments_comments_and_blank_lines()
    {
        var variables = Parse("# the app's settings\n\nASPNETCORE_ENVIRONMENT=Production\n; also a comment\n  PORT = 8080  \nEMPTY=\n");
        Assert.That(variables, Is.EqualTo(new Dictionary<string, string>
        {
            ["ASPNETCORE_ENVIRONMENT"] = "Production", ["PORT"] = "8080", ["EMPTY"] = "",
        }));
    }

    [Test]
    public void The_unit_configuration_file_reads_as_systemd_reads_it()
    {
        var variables = Parse("OPTIONS=--listen :8080 --chdir /srv/app/current\nCOMMAND=/usr/bin/dotnet App.dll\n");
        Assert.That(variables["OPTIONS"], Is.EqualTo("--listen :8080 --chdir /srv/app/current"));
        Assert.That(variables["COMMAND"], Is.EqualTo("/usr/bin/dotnet App.dll"));
    }

    [TestCase("A='single $quoted \\n'", "single $quoted \\n")]
    [TestCase("A=\"double \\\"quoted\\\" \\\\ \\$HOME\"", "double \"quoted\" \\ $HOME")]
    [TestCase("A=mixed' 'and\" \"plain", "mixed and plain")]
    [TestCase("A=escaped\\ blank\\#", "escaped blank#")]
    [TestCase("A=\"  kept blanks  \"", "  kept blanks  ")]
    [TestCase("A=value # not a comment", "value # not a comment")]
    [TestCase("A=a=b=c", "a=b=c")]
    [TestCase("A=crlf\r\n", "crlf")]
    public void Values_are_read_as_systemd_reads_them(string line, string value) =>
        Assert.That(Parse(line)["A"], Is.EqualTo(value));

    [Test]
    public void A_backslash_at_the_end_of_a_line_continues_the_value()
    {
        var variables = Parse("LONG=first \\\nsecond\nQUOTED=\"one \\\ntwo\"\nNEXT=3\n");
        Assert.That(variables["LONG"], Is.EqualTo("first second"));
        Assert.That(variables["QUOTED"], Is.EqualTo("one two"));
        Assert.That(variables["NEXT"], Is.EqualTo("3"));
    }

    [Test]
    public void A_quoted_value_may_span_lines()
    {
        Assert.That(Parse("CERT='line one\nline two'\nB=2")["CERT"], Is.EqualTo("line one\nline two"));
    }

    [Test]
    public void A_later_assignment_of_a_name_comes_after_the_earlier_one()
    {
        Assert.That(EnvironmentFile.TryParse("A=1\nA=2\n", out var contents, out _), Is.True);
        Assert.That(contents!.Variables.Select(v => v.Value), Is.EqualTo(new[] { "1", "2" }));
    }

    [Test]
    public void Lines_systemd_ignores_are_skipped_with_a_warning_naming_the_line()
    {
        Assert.That(EnvironmentFile.TryParse("A=1\nnot an assignment\n2BAD=x\nexport B=2\nC=3\n", out var contents, out _), Is.True);
        Assert.That(contents!.Variables.Select(v => v.Key), Is.EqualTo(new[] { "A", "C" }));
        Assert.That(contents.Warnings, Has.Count.EqualTo(3));
        Assert.That(contents.Warnings[0], Does.StartWith("line 2: no '='"));
        Assert.That(contents.Warnings[1], Does.StartWith("line 3: \"2BAD\" is not a valid variable name"));
        Assert.That(contents.Warnings[2], Does.StartWith("line 4: \"export B\" is not a valid variable name"));
    }

    [TestCase("A=1\nB='never closed\nC=3\n", "line 2: a quote opened here is never closed")]
    [TestCase("A=\"open", "line 1: a quote opened here is never closed")]
    public void A_quote_left_open_is_an_error_naming_its_line(string text, string error)
    {
        Assert.That(EnvironmentFile.TryParse(text, out _, out var message), Is.False);
        Assert.That(message, Is.EqualTo(error));
    }

    [Test]
    public void Line_numbers_count_continued_lines()
    {
        Assert.That(EnvironmentFile.TryParse("A=one \\\ntwo\nbad line\n", out var contents, out _), Is.True);
        Assert.That(contents!.Warnings.Single(), Does.StartWith("line 3:"));
    }
}
