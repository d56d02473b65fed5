using System.Text;
using System.Text.Json;

namespace GSupervisor.Daemon;

/// <summary>
/// A reload request on the control socket: <c>reload</c> or <c>reload wait</c>, optionally followed by a JSON object
/// with what the next generation runs, <c>{"command":["dotnet","app.dll"]}</c> (one line, whatever the arguments hold).
/// </summary>
internal sealed record ReloadRequest(bool Wait, IReadOnlyList<string>? Command)
{
    public string Encode()
    {
        var verb = Wait ? "reload wait" : "reload";
        if (Command is null) return verb;
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            w.WriteStartArray("command");
            foreach (var argument in Command) w.WriteStringValue(argument);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return verb + " " + Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>Null when <paramref name="line"/> is no reload request; <paramref name="error"/> set when it is one that cannot be read.</summary>
    public static ReloadRequest? TryParse(string line, out string? error)
    {
        error = null;
        var brace = line.IndexOf('{');
        var verb = (brace < 0 ? line : line[..brace]).TrimEnd();
        if (verb is not ("reload" or "reload wait")) return null;
        var wait = verb == "reload wait";
        if (brace < 0) return new ReloadRequest(wait, null);
        try
        {
            using var document = JsonDocument.Parse(line[brace..]);
            if (!document.RootElement.TryGetProperty("command", out var command) || command.ValueKind != JsonValueKind.Array)
            {
                error = "the reload request has no command array";
                return null;
            }
            var argv = new List<string>();
            foreach (var item in command.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.String)
                {
                    error = "the reload request's command holds something other than strings";
                    return null;
                }
                argv.Add(item.GetString()!);
            }
            if (argv.Count == 0 || argv[0].Length == 0)
            {
                error = "the reload request's command is empty";
                return null;
            }
            return new ReloadRequest(wait, argv);
        }
        catch (JsonException e)
        {
            error = $"the reload request is not valid JSON: {e.Message}";
            return null;
        }
    }
}
