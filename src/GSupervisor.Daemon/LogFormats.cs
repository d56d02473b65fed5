// Overview
// --------
// How the supervisor's own log lines look (--log-format). The children's relayed output is never touched.
//   text     today's human format: timestamp, level, message;
//   journal  when stderr is the journal (JOURNAL_STREAM names stderr's device and inode, as systemd sets it): each
//            line starts with its syslog priority, <3> for errors to <7> for debug, and carries no timestamp of
//            its own, so `journalctl -p err` finds failed reloads and nothing routine (sd-daemon(3));
//   json     one object per line for log shippers: timestamp (UTC), level, message, then the event's fields
//            (generation, pid, result, ...).
// auto (the default) is journal under the journal and text anywhere else.
//
// JSON is written here with Utf8JsonWriter, not with Serilog.Formatting.Compact: its CLEF lines leave the level
// out for Information and carry the message as a template (@mt) whose text is a property, where shippers and
// `jq` want plain "level" and "message" fields.

using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Mono.Unix.Native;
using Serilog.Events;
using Serilog.Formatting;
using Serilog.Parsing;

namespace GSupervisor.Daemon;

internal enum LogFormat { Auto, Text, Json }

internal static class LogFormats
{
    public const string TextTemplate = "{Timestamp:yyyy-MM-dd HH:mm:ss.fff} {Level:u3} {Message:lj}{NewLine}{Exception}";

    /// <summary>True when stderr is the systemd journal's stream: JOURNAL_STREAM is "DEVICE:INODE" of fd 2.</summary>
    public static bool StderrIsJournal() => StderrIsJournal(Environment.GetEnvironmentVariable("JOURNAL_STREAM"));

    internal static bool StderrIsJournal(string? journalStream)
    {
        if (journalStream?.Split(':') is not [var device, var inode] || Syscall.fstat(2, out var st) != 0) return false;
        return ulong.TryParse(device, NumberStyles.None, CultureInfo.InvariantCulture, out var d) && d == st.st_dev &&
            ulong.TryParse(inode, NumberStyles.None, CultureInfo.InvariantCulture, out var i) && i == st.st_ino;
    }

    /// <summary>The formatter for <paramref name="format"/>, or null for the text template.</summary>
    public static ITextFormatter? Formatter(LogFormat format) => format switch
    {
        LogFormat.Json => new JsonLines(),
        LogFormat.Auto when StderrIsJournal() => new JournalLines(),
        _ => null,
    };

    /// <summary>How a line of the supervisor's own that is not a log event (a start-up error) starts: its priority under the journal.</summary>
    public static string ErrorPrefix() => StderrIsJournal() ? "<3>" : "";

    /// <summary>The syslog priority of a level: err, warning, info, debug (sd-daemon(3)'s SD_ERR ... SD_DEBUG).</summary>
    internal static int SyslogPriority(LogEventLevel level) => level switch
    {
        LogEventLevel.Fatal => 2,
        LogEventLevel.Error => 3,
        LogEventLevel.Warning => 4,
        LogEventLevel.Information => 6,
        _ => 7,
    };

    /// <summary>The message with its values as they are (strings unquoted), as the text template's {Message:lj} shows it.</summary>
    internal static string Render(LogEvent e)
    {
        var sb = new StringBuilder();
        foreach (var token in e.MessageTemplate.Tokens)
        {
            if (token is PropertyToken p && e.Properties.TryGetValue(p.PropertyName, out var value))
                sb.Append(value is ScalarValue { Value: string s } ? s : value.ToString(null, CultureInfo.InvariantCulture));
            else
                sb.Append(token is TextToken t ? t.Text : token.ToString());
        }
        return sb.ToString();
    }

    private sealed class JournalLines : ITextFormatter
    {
        public void Format(LogEvent e, TextWriter output)
        {
            var prefix = $"<{SyslogPriority(e.Level)}>";
            var text = e.Exception is { } ex ? Render(e) + "\n" + ex : Render(e);
            // Every line of the event: the journal reads the prefix line by line.
            foreach (var line in text.Split('\n')) output.Write(prefix + line + "\n");
        }
    }

    private sealed class JsonLines : ITextFormatter
    {
        public void Format(LogEvent e, TextWriter output)
        {
            using var buffer = new MemoryStream();
            using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                w.WriteStartObject();
                w.WriteString("timestamp", e.Timestamp.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture));
                w.WriteString("level", e.Level switch
                {
                    LogEventLevel.Verbose or LogEventLevel.Debug => "debug",
                    LogEventLevel.Information => "info",
                    LogEventLevel.Warning => "warning",
                    LogEventLevel.Error => "error",
                    _ => "fatal",
                });
                w.WriteString("message", Render(e));
                foreach (var (name, value) in e.Properties)
                {
                    if (name == "Message") continue; // the whole text of the machine's lines: it is "message"
                    var key = char.ToLowerInvariant(name[0]) + name[1..];
                    switch (value)
                    {
                        case ScalarValue { Value: int or long or double or decimal } number:
                            w.WritePropertyName(key);
                            w.WriteRawValue(Convert.ToString(number.Value, CultureInfo.InvariantCulture)!);
                            break;
                        case ScalarValue { Value: null }:
                            w.WriteNull(key);
                            break;
                        case ScalarValue { Value: bool b }:
                            w.WriteBoolean(key, b);
                            break;
                        case ScalarValue { Value: string s }:
                            w.WriteString(key, s);
                            break;
                        default:
                            w.WriteString(key, value.ToString(null, CultureInfo.InvariantCulture));
                            break;
                    }
                }
                if (e.Exception is { } ex) w.WriteString("exception", ex.ToString());
                w.WriteEndObject();
            }
            output.Write(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
            output.Write('\n');
        }
    }
}
