// Overview
// --------
// UpgradeState to JSON and back, written out field by field with Utf8JsonWriter and read with JsonDocument
// rather than by the serializer's generated code: the serializer's metadata would add most of a megabyte to
// the binary, and its relocated data pages to every supervisor's RSS, for a document written once per upgrade.
// Reading follows the document's rules (UpgradeState.cs): a field that is not there keeps its default, a field
// this version does not know is never looked at, and a field of the wrong type is an error.

using System.Text.Json;
using GSupervisor.Core;

namespace GSupervisor.Daemon.Upgrade;

internal static class UpgradeStateJson
{
    public static byte[] Write(UpgradeState s)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            w.WriteNumber("format", s.Format);
            w.WriteString("writtenBy", s.WrittenBy);
            w.WriteNumber("requestedAtUs", s.RequestedAtUs);
            w.WriteNumber("upgrades", s.Upgrades);
            w.WriteString("commandPath", s.CommandPath);
            WriteStrings(w, "command", s.Command);
            if (s.NextCommand is { } next) WriteStrings(w, "nextCommand", next);
            WriteArray(w, "launches", s.Launches, (w, l) =>
            {
                w.WriteNumber("generation", l.Generation);
                WriteStrings(w, "argv", l.Argv);
                w.WriteString("commandPath", l.CommandPath);
                w.WriteString("directory", l.Directory);
                w.WriteBoolean("changesDirectory", l.ChangesDirectory);
            });
            w.WritePropertyName("machine");
            WriteMachine(w, s.Machine);
            WriteArray(w, "listeners", s.Listeners, (w, l) =>
            {
                w.WriteString("spec", l.Spec);
                if (l.Name is not null) w.WriteString("name", l.Name);
                w.WriteNumber("fd", l.Fd);
                w.WriteString("address", l.Address);
                if (l.UnixPathToRemove is not null) w.WriteString("unixPathToRemove", l.UnixPathToRemove);
                w.WriteNumber("unixInode", l.UnixInode);
            });
            w.WriteString("runtimeDirectory", s.RuntimeDirectory);
            w.WriteNumber("notifyFd", s.NotifyFd);
            w.WriteNumber("handoffFd", s.HandoffFd);
            w.WriteNumber("controlFd", s.ControlFd);
            if (s.MetricsFd >= 0)
            {
                w.WriteNumber("metricsFd", s.MetricsFd);
                w.WriteString("metricsAddress", s.MetricsAddress);
            }
            WriteArray(w, "handoffConnections", s.HandoffConnections, (w, c) =>
            {
                w.WriteNumber("generation", c.Generation);
                w.WriteNumber("fd", c.Fd);
                w.WriteNumber("peerPid", c.PeerPid);
                w.WriteNumber("peerUid", c.PeerUid);
                w.WriteBase64String("pending", c.Pending);
            });
            WriteArray(w, "outputs", s.Outputs, (w, o) =>
            {
                w.WriteNumber("generation", o.Generation);
                w.WriteNumber("stdoutFd", o.StdoutFd);
                w.WriteNumber("stderrFd", o.StderrFd);
                w.WriteBase64String("tail", o.Tail);
            });
            WriteArray(w, "reloadWaiters", s.ReloadWaiters, (w, r) =>
            {
                w.WriteNumber("fd", r.Fd);
                w.WriteNumber("minGeneration", r.MinGeneration);
            });
            w.WriteStartArray("upgradeWaiterFds");
            foreach (var fd in s.UpgradeWaiterFds) w.WriteNumberValue(fd);
            w.WriteEndArray();
            WriteArray(w, "deferred", s.Deferred, (w, d) =>
            {
                if (d.Signal is { } signal) w.WriteNumber("signal", signal);
                if (d.ControlFd is { } fd) w.WriteNumber("controlFd", fd);
                if (d.ControlLine is { } line) w.WriteString("controlLine", line);
            });
            w.WriteNumber("interrupts", s.Interrupts);
            w.WriteBoolean("saidNoDrain", s.SaidNoDrain);
#if STATE_TEST_FIELD
            if (s.AddedInTestBuild is { } added) w.WriteString("addedInTestBuild", added);
#endif
            w.WriteEndObject();
        }
        return stream.ToArray();
    }

    private static void WriteMachine(Utf8JsonWriter w, MachineSnapshot m)
    {
        w.WriteStartObject();
        w.WriteNumber("originMonotonicUs", m.OriginMonotonicUs);
        w.WriteString("phase", m.Phase);
        w.WriteNumber("lastNumber", m.LastNumber);
        if (m.PendingReload is not null) w.WriteString("pendingReload", m.PendingReload);
        if (m.RestartAtUs is { } restartAt) w.WriteNumber("restartAtUs", restartAt);
        w.WriteNumber("consecutiveFailures", m.ConsecutiveFailures);
        w.WriteNumber("restarts", m.Restarts);
        w.WriteNumber("exitCode", m.ExitCode);
        w.WriteBoolean("killedAll", m.KilledAll);
        if (m.LastReload is { } r)
        {
            w.WriteStartObject("lastReload");
            w.WriteNumber("generation", r.Generation);
            w.WriteBoolean("succeeded", r.Succeeded);
            w.WriteString("message", r.Message);
            w.WriteNumber("atUs", r.AtUs);
            if (r.TookToReadyUs is { } took) w.WriteNumber("tookToReadyUs", took);
            w.WriteEndObject();
        }
        w.WriteNumber("reloadsSucceeded", m.ReloadsSucceeded);
        w.WriteNumber("reloadsFailed", m.ReloadsFailed);
        w.WriteStartArray("reloadDurationCounts");
        foreach (var count in m.ReloadDurationCounts) w.WriteNumberValue(count);
        w.WriteEndArray();
        w.WriteNumber("reloadDurationSumUs", m.ReloadDurationSumUs);
        WriteArray(w, "generations", m.Generations, (w, g) =>
        {
            w.WriteNumber("number", g.Number);
            w.WriteString("cause", g.Cause);
            if (g.Pid is { } pid) w.WriteNumber("pid", pid);
            w.WriteString("state", g.State);
            w.WriteNumber("startedAtUs", g.StartedAtUs);
            if (g.ReadyAtUs is { } ready) w.WriteNumber("readyAtUs", ready);
            if (g.StopRequestedAtUs is { } stop) w.WriteNumber("stopRequestedAtUs", stop);
            if (g.DeadlineUs is { } deadline) w.WriteNumber("deadlineUs", deadline);
            w.WriteBoolean("killed", g.Killed);
            w.WriteBoolean("failedToStart", g.FailedToStart);
            if (g.Status is not null) w.WriteString("status", g.Status);
            if (g.Drain is not null) w.WriteString("drain", g.Drain);
            if (g.LeaderExit is { } exit)
            {
                w.WriteStartObject("leaderExit");
                if (exit.Code is { } code) w.WriteNumber("code", code);
                if (exit.Signal is { } signal) w.WriteNumber("signal", signal);
                w.WriteBoolean("coreDumped", exit.CoreDumped);
                w.WriteEndObject();
            }
        });
        w.WriteEndObject();
    }

    private static void WriteArray<T>(Utf8JsonWriter w, string name, IEnumerable<T> items, Action<Utf8JsonWriter, T> fields)
    {
        w.WriteStartArray(name);
        foreach (var item in items)
        {
            w.WriteStartObject();
            fields(w, item);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    private static void WriteStrings(Utf8JsonWriter w, string name, IEnumerable<string> items)
    {
        w.WriteStartArray(name);
        foreach (var item in items) w.WriteStringValue(item);
        w.WriteEndArray();
    }

    /// <exception cref="UpgradeStateException">Not JSON, not an object, or a field of the wrong type.</exception>
    public static UpgradeState Read(ReadOnlySpan<byte> json)
    {
        JsonDocument document;
        try
        {
            var reader = new Utf8JsonReader(json);
            document = JsonDocument.ParseValue(ref reader);
        }
        catch (JsonException e)
        {
            throw new UpgradeStateException($"the upgrade state is not valid JSON: {e.Message}");
        }
        using (document)
        {
            var d = new Fields(document.RootElement, "the upgrade state");
            var s = new UpgradeState();
            s.Format = d.Int("format", s.Format);
            s.WrittenBy = d.String("writtenBy") ?? s.WrittenBy;
            s.RequestedAtUs = d.Long("requestedAtUs") ?? s.RequestedAtUs;
            s.Upgrades = d.Int("upgrades", s.Upgrades);
            s.CommandPath = d.String("commandPath") ?? s.CommandPath;
            s.Command = d.Strings("command");
            s.NextCommand = d.Has("nextCommand") ? d.Strings("nextCommand") : null;
            s.Launches = d.Array("launches", l => new LaunchState
            {
                Generation = l.Int("generation", 0), Argv = l.Strings("argv"), CommandPath = l.String("commandPath") ?? "",
                Directory = l.String("directory") ?? "", ChangesDirectory = l.Bool("changesDirectory"),
            });
            if (d.Object("machine") is { } machine) s.Machine = ReadMachine(machine);
            s.Listeners = d.Array("listeners", l => new ListenerState
            {
                Spec = l.String("spec") ?? "", Name = l.String("name"), Fd = l.Int("fd", -1), Address = l.String("address") ?? "",
                UnixPathToRemove = l.String("unixPathToRemove"), UnixInode = l.ULong("unixInode"),
            });
            s.RuntimeDirectory = d.String("runtimeDirectory") ?? s.RuntimeDirectory;
            s.NotifyFd = d.Int("notifyFd", -1);
            s.HandoffFd = d.Int("handoffFd", -1);
            s.ControlFd = d.Int("controlFd", -1);
            s.MetricsFd = d.Int("metricsFd", -1);
            s.MetricsAddress = d.String("metricsAddress");
            s.HandoffConnections = d.Array("handoffConnections", c => new ConnectionState
            {
                Generation = c.Int("generation", 0), Fd = c.Int("fd", -1), PeerPid = c.Int("peerPid", 0), PeerUid = c.Int("peerUid", -1),
                Pending = c.Bytes("pending"),
            });
            s.Outputs = d.Array("outputs", o => new OutputState
            {
                Generation = o.Int("generation", 0), StdoutFd = o.Int("stdoutFd", -1), StderrFd = o.Int("stderrFd", -1), Tail = o.Bytes("tail"),
            });
            s.ReloadWaiters = d.Array("reloadWaiters", r => new WaiterState { Fd = r.Int("fd", -1), MinGeneration = r.Int("minGeneration", 0) });
            s.UpgradeWaiterFds = d.Numbers("upgradeWaiterFds");
            s.Deferred = d.Array("deferred", e => new DeferredState
            {
                Signal = e.Has("signal") ? e.Int("signal", 0) : null,
                ControlFd = e.Has("controlFd") ? e.Int("controlFd", -1) : null,
                ControlLine = e.String("controlLine"),
            });
            s.Interrupts = d.Int("interrupts", 0);
            s.SaidNoDrain = d.Bool("saidNoDrain");
#if STATE_TEST_FIELD
            s.AddedInTestBuild = d.String("addedInTestBuild");
#endif
            return s;
        }
    }

    private static MachineSnapshot ReadMachine(Fields m)
    {
        var s = new MachineSnapshot();
        s.OriginMonotonicUs = m.Long("originMonotonicUs") ?? 0;
        s.Phase = m.String("phase") ?? s.Phase;
        s.LastNumber = m.Int("lastNumber", 0);
        s.PendingReload = m.String("pendingReload");
        s.RestartAtUs = m.Long("restartAtUs");
        s.ConsecutiveFailures = m.Int("consecutiveFailures", 0);
        s.Restarts = m.Int("restarts", 0);
        s.ExitCode = m.Int("exitCode", 0);
        s.KilledAll = m.Bool("killedAll");
        if (m.Object("lastReload") is { } r)
            s.LastReload = new ReloadSnapshot { Generation = r.Int("generation", 0), Succeeded = r.Bool("succeeded"), Message = r.String("message") ?? "", AtUs = r.Long("atUs") ?? 0, TookToReadyUs = r.Long("tookToReadyUs") };
        s.ReloadsSucceeded = m.Long("reloadsSucceeded") ?? 0;
        s.ReloadsFailed = m.Long("reloadsFailed") ?? 0;
        s.ReloadDurationSumUs = m.Long("reloadDurationSumUs") ?? 0;
        s.ReloadDurationCounts = m.Longs("reloadDurationCounts");
        s.Generations = m.Array("generations", g => new GenerationSnapshot
        {
            Number = g.Int("number", 0),
            Cause = g.String("cause") ?? nameof(GenerationCause.Initial),
            Pid = g.Has("pid") ? g.Int("pid", 0) : null,
            State = g.String("state") ?? nameof(GenerationState.Ready),
            StartedAtUs = g.Long("startedAtUs") ?? 0,
            ReadyAtUs = g.Long("readyAtUs"),
            StopRequestedAtUs = g.Long("stopRequestedAtUs"),
            DeadlineUs = g.Long("deadlineUs"),
            Killed = g.Bool("killed"),
            FailedToStart = g.Bool("failedToStart"),
            Status = g.String("status"),
            Drain = g.String("drain"),
            LeaderExit = g.Object("leaderExit") is { } e
                ? new ExitStatusSnapshot { Code = e.Has("code") ? e.Int("code", 0) : null, Signal = e.Has("signal") ? e.Int("signal", 0) : null, CoreDumped = e.Bool("coreDumped") }
                : null,
        });
        return s;
    }

    /// <summary>One JSON object's fields, read by name; <paramref name="where"/> names it in errors.</summary>
    private readonly struct Fields(JsonElement element, string where)
    {
        private JsonElement? Get(string name, JsonValueKind kind)
        {
            if (element.ValueKind != JsonValueKind.Object) throw new UpgradeStateException($"{where} is not a JSON object");
            if (!element.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
            var matches = kind == JsonValueKind.True ? value.ValueKind is JsonValueKind.True or JsonValueKind.False : value.ValueKind == kind;
            return matches ? value : throw new UpgradeStateException($"{where}: \"{name}\" is a {value.ValueKind}, not a {kind}");
        }

        public bool Has(string name) => element.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null;

        public int Int(string name, int fallback) => Get(name, JsonValueKind.Number) is { } v
            ? v.TryGetInt32(out var i) ? i : throw new UpgradeStateException($"{where}: \"{name}\" is not a 32-bit integer")
            : fallback;

        public long? Long(string name) => Get(name, JsonValueKind.Number) is { } v
            ? v.TryGetInt64(out var l) ? l : throw new UpgradeStateException($"{where}: \"{name}\" is not a 64-bit integer")
            : null;

        public ulong ULong(string name) => Get(name, JsonValueKind.Number) is { } v
            ? v.TryGetUInt64(out var u) ? u : throw new UpgradeStateException($"{where}: \"{name}\" is not an unsigned 64-bit integer")
            : 0;

        public string? String(string name) => Get(name, JsonValueKind.String)?.GetString();

        public bool Bool(string name) => Get(name, JsonValueKind.True)?.GetBoolean() ?? false;

        public byte[] Bytes(string name) => Get(name, JsonValueKind.String) is { } v
            ? v.TryGetBytesFromBase64(out var bytes) ? bytes : throw new UpgradeStateException($"{where}: \"{name}\" is not base64")
            : [];

        public Fields? Object(string name) => Get(name, JsonValueKind.Object) is { } v ? new Fields(v, $"{where}: {name}") : null;

        public List<T> Array<T>(string name, Func<Fields, T> read)
        {
            if (Get(name, JsonValueKind.Array) is not { } array) return [];
            var items = new List<T>();
            var index = 0;
            foreach (var item in array.EnumerateArray()) items.Add(read(new Fields(item, $"{where}: {name}[{index++}]")));
            return items;
        }

        public List<string> Strings(string name)
        {
            if (Get(name, JsonValueKind.Array) is not { } array) return [];
            var strings = new List<string>();
            foreach (var item in array.EnumerateArray())
                strings.Add(item.ValueKind == JsonValueKind.String
                    ? item.GetString()! : throw new UpgradeStateException($"{where}: \"{name}\" holds something other than strings"));
            return strings;
        }

        public List<long> Longs(string name)
        {
            if (Get(name, JsonValueKind.Array) is not { } array) return [];
            var numbers = new List<long>();
            foreach (var n in array.EnumerateArray())
                numbers.Add(n.ValueKind == JsonValueKind.Number && n.TryGetInt64(out var l)
                    ? l : throw new UpgradeStateException($"{where}: \"{name}\" holds something other than integers"));
            return numbers;
        }

        public List<int> Numbers(string name)
        {
            var at = where; // a struct's lambda cannot reach its fields
            return Longs(name).Select(l => l is >= int.MinValue and <= int.MaxValue
                ? (int)l : throw new UpgradeStateException($"{at}: \"{name}\" holds something other than 32-bit integers")).ToList();
        }
    }
}
