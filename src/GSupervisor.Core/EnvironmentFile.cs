// Overview
// --------
// Reads an environment file in the syntax of systemd's EnvironmentFile= (the same file can serve both), for
// gsupervisor's --env-file, which is read again before every generation starts:
//   - one assignment per line, KEY=VALUE; blank lines and lines whose first non-blank character is # or ; are
//     comments; blanks around KEY and at the start of VALUE are dropped;
//   - VALUE may mix plain text, 'single-quoted' text (taken as it is) and "double-quoted" text (where \" \\ \$
//     and \` are escapes and a backslash before the end of the line continues the value on the next line);
//   - outside quotes a backslash takes the next character as it is, a backslash at the end of the line continues
//     the value on the next line, and trailing blanks are dropped.
// A line without '=' or with a name that is no valid variable name is skipped with a warning, as systemd does; a
// quote left open at the end of the file is an error (systemd would take the rest of the file as the value, which
// is never what was meant).

using System.Text;

namespace GSupervisor.Core;

/// <summary>The assignments of an environment file, in order (a later one of the same name wins), and what was skipped.</summary>
public sealed record EnvironmentFileContents(IReadOnlyList<KeyValuePair<string, string>> Variables, IReadOnlyList<string> Warnings);

public static class EnvironmentFile
{
    /// <summary>Parses <paramref name="text"/>; false with a one-line <paramref name="error"/> (naming the line) when it cannot be read.</summary>
    public static bool TryParse(string text, out EnvironmentFileContents? contents, out string error)
    {
        var variables = new List<KeyValuePair<string, string>>();
        var warnings = new List<string>();
        contents = null;
        error = "";
        var i = 0;
        var line = 1;
        while (i < text.Length)
        {
            var startLine = line;
            // Blanks before the name; a comment or blank line is skipped whole.
            while (i < text.Length && text[i] is ' ' or '\t' or '\r') i++;
            if (i >= text.Length) break;
            if (text[i] == '\n')
            {
                i++;
                line++;
                continue;
            }
            if (text[i] is '#' or ';')
            {
                SkipToEndOfLine(text, ref i, ref line);
                continue;
            }
            var nameStart = i;
            while (i < text.Length && text[i] is not ('=' or '\n')) i++;
            if (i >= text.Length || text[i] == '\n')
            {
                warnings.Add($"line {startLine}: no '=' in \"{Shorten(text[nameStart..i].Trim())}\"; skipped");
                SkipToEndOfLine(text, ref i, ref line);
                continue;
            }
            var name = text[nameStart..i].TrimEnd(' ', '\t', '\r');
            i++; // '='
            while (i < text.Length && text[i] is ' ' or '\t') i++;
            if (!TryReadValue(text, ref i, ref line, out var value, out var quoteLine))
            {
                error = $"line {quoteLine}: a quote opened here is never closed";
                return false;
            }
            if (!IsValidName(name))
                warnings.Add($"line {startLine}: \"{Shorten(name)}\" is not a valid variable name (letters, digits and _, not starting with a digit); skipped");
            else
                variables.Add(new KeyValuePair<string, string>(name, value));
        }
        contents = new EnvironmentFileContents(variables, warnings);
        return true;
    }

    /// <summary>A name a process environment can carry and a shell can use: [A-Za-z_][A-Za-z0-9_]*.</summary>
    public static bool IsValidName(string name) =>
        name.Length > 0 && !char.IsAsciiDigit(name[0]) && name.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    private static bool TryReadValue(string text, ref int i, ref int line, out string value, out int quoteLine)
    {
        var sb = new StringBuilder();
        var trailingBlanks = 0; // blanks at the end of unquoted text, dropped if nothing follows them
        quoteLine = line;
        while (i < text.Length && text[i] != '\n')
        {
            var c = text[i];
            if (c == '\'')
            {
                quoteLine = line;
                var close = text.IndexOf('\'', i + 1);
                if (close < 0) { value = ""; return false; }
                var quoted = text[(i + 1)..close];
                line += quoted.Count(ch => ch == '\n');
                sb.Append(quoted);
                trailingBlanks = 0;
                i = close + 1;
            }
            else if (c == '"')
            {
                quoteLine = line;
                i++;
                while (true)
                {
                    if (i >= text.Length) { value = ""; return false; }
                    var q = text[i];
                    if (q == '"') { i++; break; }
                    if (q == '\\' && i + 1 < text.Length)
                    {
                        var next = text[i + 1];
                        if (next == '\n') { line++; i += 2; continue; } // continuation inside quotes
                        if (next is '"' or '\\' or '$' or '`') { sb.Append(next); i += 2; continue; }
                    }
                    if (q == '\n') line++;
                    sb.Append(q);
                    i++;
                }
                trailingBlanks = 0;
            }
            else if (c == '\\')
            {
                if (i + 1 >= text.Length) { i++; continue; }
                var next = text[i + 1];
                if (next == '\n') line++; // continuation: the value goes on on the next line
                else if (next != '\r' || i + 2 >= text.Length || text[i + 2] != '\n') sb.Append(next);
                else { line++; i++; } // \ before a CRLF line end
                i += 2;
                trailingBlanks = 0;
            }
            else if (c == '\r' && i + 1 < text.Length && text[i + 1] == '\n')
            {
                i++;
            }
            else
            {
                sb.Append(c);
                trailingBlanks = c is ' ' or '\t' ? trailingBlanks + 1 : 0;
                i++;
            }
        }
        if (i < text.Length)
        {
            i++; // the line's '\n'
            line++;
        }
        sb.Length -= trailingBlanks;
        value = sb.ToString();
        return true;
    }

    private static void SkipToEndOfLine(string text, ref int i, ref int line)
    {
        while (i < text.Length && text[i] != '\n') i++;
        if (i < text.Length)
        {
            i++;
            line++;
        }
    }

    private static string Shorten(string s) => s.Length <= 40 ? s : s[..40] + "...";
}
