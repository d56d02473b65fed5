using System.Globalization;
using System.Text;

namespace GSupervisor.Core;

/// <summary>
/// Wire format of the handoff socket (a Unix stream socket named by <c>GSUPERVISOR_HANDOFF</c>).
/// <para>
/// The supervisor checks the peer's credentials when a process connects. It then writes one greeting line,
/// <c>GSUPERVISOR/1 generation=N fds=K names=a:b\n</c> (names percent-encoded, see <see cref="EncodeName"/>), whose first byte carries the K listening sockets as
/// <c>SCM_RIGHTS</c>, in the order of LISTEN_FDNAMES. A refused peer reads <c>ERR reason\n</c> and the connection
/// closes. After the greeting, the child writes sd_notify lines (<c>READY=1\n</c>, <c>STATUS=...\n</c>,
/// <c>STOPPING=1\n</c>, and <c>X_GSUPERVISOR_DRAIN=how\n</c> to say how it drains), at most <see cref="NotifyMessage.MaxBytes"/> bytes a line. The supervisor writes
/// <c>DRAIN\n</c> just before it sends the generation its stop signal, and closes the connection when the
/// generation ends; a child that sees end-of-file knows the supervisor is gone. With <c>--probation</c>, a
/// generation that became ready beside a serving one reads <c>PROBATION ms=N\n</c> (N: milliseconds left), and
/// <c>PROBATION_PASSED\n</c> once it serves alone; during the probation it may write <c>WATCHDOG=trigger\n</c>
/// to say it has failed, and is then rolled back (drained; its predecessor serves on). A child ignores lines it
/// does not know, so a later supervisor may add some.
/// </para>
/// </summary>
public static class HandoffProtocol
{
    public const string Magic = "GSUPERVISOR/1";
    public const int MaxLineBytes = NotifyMessage.MaxBytes;

    public static byte[] EncodeGreeting(int generation, IReadOnlyList<string> names) =>
        Encoding.UTF8.GetBytes($"{Magic} generation={generation} fds={names.Count} names={string.Join(':', names.Select(EncodeName))}\n");

    /// <summary>
    /// A name as it travels in the greeting: '%', space, ':' and control characters percent-encoded, so a name
    /// systemd allows (FileDescriptorName= may hold spaces) cannot break the line's fields.
    /// </summary>
    public static string EncodeName(string name)
    {
        var sb = new StringBuilder(name.Length);
        foreach (var c in name)
            if (c is '%' or ' ' or ':' || char.IsControl(c)) sb.Append('%').Append(((int)c).ToString("X2", CultureInfo.InvariantCulture));
            else sb.Append(c);
        return sb.ToString();
    }

    /// <summary>The first word of the line that tells a generation it is on probation: <c>PROBATION ms=N</c>.</summary>
    public const string ProbationWord = "PROBATION";

    /// <summary>The line that tells a generation its probation passed: it now serves alone.</summary>
    public const string ProbationPassedLine = "PROBATION_PASSED";

    public static string EncodeProbation(TimeSpan left) =>
        $"{ProbationWord} ms={((long)Math.Ceiling(Math.Max(0, left.TotalMilliseconds))).ToString(CultureInfo.InvariantCulture)}";

    /// <summary>Parses a <c>PROBATION ms=N</c> line: the probation's time left.</summary>
    public static bool TryParseProbation(string line, out TimeSpan left)
    {
        left = TimeSpan.Zero;
        const string prefix = ProbationWord + " ms=";
        if (!line.StartsWith(prefix, StringComparison.Ordinal) ||
            !long.TryParse(line.AsSpan(prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out var ms)) return false;
        left = TimeSpan.FromMilliseconds(ms);
        return true;
    }

    /// <summary>The line that asks a generation to drain: stop accepting, finish what it has, then exit.</summary>
    public const string DrainLine = "DRAIN";

    /// <summary>
    /// The sd_notify field a child uses to say how it drains on its stop signal (e.g. <c>http (injected)</c>);
    /// shown by <c>gsupervisor status</c>. Custom fields start with X_, which systemd ignores.
    /// </summary>
    public const string DrainField = "X_GSUPERVISOR_DRAIN";

    public static byte[] EncodeRefusal(string reason) =>
        Encoding.UTF8.GetBytes("ERR " + reason.Replace('\n', ' ') + "\n");

    /// <summary>The parsed greeting line.</summary>
    public sealed record Greeting(int Generation, int FdCount, IReadOnlyList<string> Names);

    /// <summary>Parses a greeting line (without its newline). A line starting "ERR " is reported as a refusal.</summary>
    public static bool TryParseGreeting(string line, out Greeting? greeting, out string error)
    {
        greeting = null;
        error = "";
        if (line.StartsWith("ERR ", StringComparison.Ordinal))
        {
            error = "the supervisor refused this process: " + line[4..];
            return false;
        }
        var parts = line.Split(' ');
        if (parts.Length < 1 || parts[0] != Magic)
        {
            error = $"unexpected greeting '{Truncate(line)}' (expected {Magic})";
            return false;
        }
        int? generation = null, count = null;
        string[] names = [];
        foreach (var part in parts.Skip(1))
        {
            var eq = part.IndexOf('=');
            if (eq < 0) continue;
            var key = part[..eq];
            var value = part[(eq + 1)..];
            switch (key)
            {
                case "generation" when int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var g):
                    generation = g;
                    break;
                case "fds" when int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var c):
                    count = c;
                    break;
                case "names":
                    names = value.Length == 0 ? [] : value.Split(':').Select(Uri.UnescapeDataString).ToArray();
                    break;
            }
        }
        if (generation is null || count is null || names.Length != count)
        {
            error = $"malformed greeting '{Truncate(line)}'";
            return false;
        }
        greeting = new Greeting(generation.Value, count.Value, names);
        return true;
    }

    private static string Truncate(string s) => s.Length <= 80 ? s : s[..80] + "...";
}
