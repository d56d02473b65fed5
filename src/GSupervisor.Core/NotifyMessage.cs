using System.Text;

namespace GSupervisor.Core;

/// <summary>
/// An sd_notify message: newline-separated <c>KEY=VALUE</c> assignments (<c>READY=1</c>, <c>STATUS=...</c>,
/// <c>STOPPING=1</c>, <c>RELOADING=1</c>, <c>MAINPID=...</c>, ...). The same lines travel over the handoff connection.
/// </summary>
public sealed class NotifyMessage
{
    /// <summary>Largest message accepted, as systemd's own limit for a notify datagram.</summary>
    public const int MaxBytes = 4096;

    private readonly Dictionary<string, string> _fields;

    private NotifyMessage(Dictionary<string, string> fields) => _fields = fields;

    public IReadOnlyDictionary<string, string> Fields => _fields;

    public bool Ready => Is("READY");
    public bool Stopping => Is("STOPPING");
    public bool Reloading => Is("RELOADING");
    /// <summary><c>WATCHDOG=trigger</c>: sd_notify's way for a service to say it has failed.</summary>
    public bool FailureReported => _fields.TryGetValue("WATCHDOG", out var v) && v == "trigger";
    public string? Status => _fields.GetValueOrDefault("STATUS");
    /// <summary>How the child drains (<see cref="HandoffProtocol.DrainField"/>), when it says.</summary>
    public string? Drain => _fields.GetValueOrDefault(HandoffProtocol.DrainField);

    private bool Is(string key) => _fields.TryGetValue(key, out var v) && v == "1";

    /// <summary>
    /// Parses a message. Lines without '=' or with an invalid key are skipped, as systemd does; a message that
    /// is too large, is not UTF-8 or holds a NUL is refused, with the reason in <paramref name="error"/>.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> data, out NotifyMessage? message, out string error)
    {
        message = null;
        error = "";
        if (data.Length > MaxBytes)
        {
            error = $"message of {data.Length} bytes is larger than {MaxBytes}";
            return false;
        }
        if (data.IndexOf((byte)0) >= 0)
        {
            error = "message holds a NUL byte";
            return false;
        }
        string text;
        try
        {
            text = new UTF8Encoding(false, true).GetString(data);
        }
        catch (DecoderFallbackException)
        {
            error = "message is not valid UTF-8";
            return false;
        }
        var fields = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n'))
        {
            var eq = line.IndexOf('=');
            if (eq <= 0) continue;
            var key = line[..eq];
            if (!key.All(c => char.IsAsciiLetterUpper(c) || char.IsAsciiDigit(c) || c == '_')) continue;
            fields[key] = line[(eq + 1)..];
        }
        message = new NotifyMessage(fields);
        return true;
    }

    /// <summary>Builds the bytes of a message from assignments such as <c>("READY", "1")</c>.</summary>
    public static byte[] Encode(params (string Key, string Value)[] fields)
    {
        var sb = new StringBuilder();
        foreach (var (key, value) in fields)
        {
            if (value.Contains('\n')) throw new ArgumentException($"value of {key} holds a newline", nameof(fields));
            sb.Append(key).Append('=').Append(value).Append('\n');
        }
        return Encoding.UTF8.GetBytes(sb.ToString());
    }
}
