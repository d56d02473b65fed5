using System.Globalization;
using System.Text;
using System.Text.Json;
using GSupervisor.Core;
using GSupervisor.Daemon.Os;

namespace GSupervisor.Daemon;

/// <summary>What `gsupervisor status` prints: text for people, JSON for tools.</summary>
internal static class StatusReport
{
    /// <summary>Which binary runs, and how often it was upgraded in place.</summary>
    public sealed record Identity(string Executable, int Upgrades, UpgradeOutcome? LastUpgrade);

    /// <summary>What generations run and where: each live one's start, the command now and the one the next reload asked for.</summary>
    public sealed record Launches(IReadOnlyDictionary<int, Launch> Started, IReadOnlyList<string> Command, IReadOnlyList<string>? NextCommand, Launcher Launcher,
        (string Reason, TimeSpan At)? LastRefusal)
    {
        /// <summary>How each generation's directory is chosen, in words.</summary>
        public string DirectoryRule => Launcher.Chdir is { } chdir ? $"{chdir} as it resolves at each start (--chdir)"
            : Launcher.LogicalDirectory is { } logical ? $"{logical} as it resolves at each start (where gsupervisor was started)"
            : $"{Environment.CurrentDirectory} (gsupervisor's own)";
    }

    public static string Text(SupervisorStateMachine machine, IReadOnlyList<BoundListener> listeners, RunSettings settings, Identity identity, Launches launches)
    {
        var now = machine.Now;
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"gsupervisor {CommandLineReader.Version}, pid {Environment.ProcessId}, up {Duration.Format(now)}, {machine.Phase.ToString().ToLowerInvariant()}\n");
        sb.Append(CultureInfo.InvariantCulture, $"executable: {identity.Executable}\n");
        sb.Append(CultureInfo.InvariantCulture, $"upgrades: {identity.Upgrades}");
        if (identity.LastUpgrade is { } u)
            sb.Append(CultureInfo.InvariantCulture, $"; last {(u.Succeeded ? "" : "refused ")}{Duration.Format(now - u.At)} ago: {u.Message}");
        sb.Append('\n');
        sb.Append("serving: ").Append(machine.Serving is { } s ? $"generation {s.Number} (pid {s.Pid}) for {Duration.Format(now - s.ReadyAt!.Value)}" : "nothing").Append('\n');
        if (machine.OnProbation is { } p)
            sb.Append(CultureInfo.InvariantCulture, $"probation: generation {p.Number} (pid {p.Pid}) serves beside it, {Duration.Format(machine.ProbationLeft)} left of {Duration.Format(settings.Policy.Probation)}; " +
                $"it replaces generation {machine.Serving?.Number} then, or is rolled back if it exits or reports failure first\n");
        sb.Append("generations:\n");
        foreach (var g in machine.Generations)
        {
            sb.Append(CultureInfo.InvariantCulture, $"  {g.Number,-4} pid {g.Pid,-8} {g.State.ToString().ToLowerInvariant(),-9} {g.Cause.ToString().ToLowerInvariant(),-8} started {Duration.Format(now - g.StartedAt)} ago  drain: {g.Drain ?? "none announced"}{(g.Status is { } st ? "  status: " + st : "")}\n");
            if (launches.Started.TryGetValue(g.Number, out var launch))
                sb.Append(CultureInfo.InvariantCulture, $"       runs {string.Join(' ', launch.Argv)}  in {launch.Directory}\n");
        }
        sb.Append("listeners:\n");
        for (var i = 0; i < listeners.Count; i++)
            sb.Append(CultureInfo.InvariantCulture, $"  fd {3 + i}  {listeners[i].Address}  name {listeners[i].Spec.FdName}\n");
        sb.Append(CultureInfo.InvariantCulture, $"restarts: {machine.Restarts}\n");
        if (machine.RestartAt is { } at)
            sb.Append(CultureInfo.InvariantCulture, $"next restart: in {Duration.Format(at > now ? at - now : TimeSpan.Zero)} (attempt {machine.ConsecutiveFailures})\n");
        if (launches.LastRefusal is { } refused && (machine.LastReload is null || machine.LastReload.At < refused.At))
            sb.Append(CultureInfo.InvariantCulture, $"last reload: refused {Duration.Format(now - refused.At)} ago, before anything started: {refused.Reason}\n");
        else sb.Append("last reload: ").Append(machine.LastReload is { } r
            ? $"{(r.Succeeded ? "succeeded" : "failed")} {Duration.Format(now - r.At)} ago{(r.TookToReady is { } took ? $" (ready after {Duration.Format(took)})" : "")}: {r.Message}"
            : "none").Append('\n');
        sb.Append(CultureInfo.InvariantCulture, $"reloads: {machine.Reloads.Succeeded} succeeded, {machine.Reloads.Failed} failed\n");
        if (machine.ReloadPending) sb.Append("a reload is queued\n");
        sb.Append(CultureInfo.InvariantCulture, $"command: {string.Join(' ', launches.Command)}\n");
        if (launches.NextCommand is { } next)
            sb.Append(CultureInfo.InvariantCulture, $"next reload runs: {string.Join(' ', next)}\n");
        sb.Append(CultureInfo.InvariantCulture, $"directory: {launches.DirectoryRule}\n");
        if (launches.Launcher.EnvFile is { } envFile)
            sb.Append(CultureInfo.InvariantCulture, $"environment file: {envFile}, read again at each start\n");
        var self = SelfFigures.Read();
        sb.Append(CultureInfo.InvariantCulture,
            $"supervisor: RSS {self.RssBytes / 1048576.0:0.0} MiB, managed heap {self.ManagedHeapBytes / 1048576.0:0.0} MiB ({self.ManagedCommittedBytes / 1048576.0:0.0} MiB committed), {self.Threads} threads, {self.OpenFds} fds\n");
        return sb.ToString();
    }

    public static string Json(SupervisorStateMachine machine, IReadOnlyList<BoundListener> listeners, RunSettings settings, Identity identity, Launches launches)
    {
        var now = machine.Now;
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("version", CommandLineReader.Version);
            w.WriteNumber("pid", Environment.ProcessId);
            w.WriteNumber("uptimeSeconds", Math.Round(now.TotalSeconds, 3));
            w.WriteString("phase", machine.Phase.ToString().ToLowerInvariant());
            w.WriteString("executable", identity.Executable);
            w.WriteNumber("upgrades", identity.Upgrades);
            if (identity.LastUpgrade is { } u)
            {
                w.WriteStartObject("lastUpgrade");
                w.WriteBoolean("succeeded", u.Succeeded);
                w.WriteString("message", u.Message);
                if (u.Took is { } took) w.WriteNumber("tookSeconds", Math.Round(took.TotalSeconds, 4)); else w.WriteNull("tookSeconds");
                w.WriteNumber("secondsAgo", Math.Round((now - u.At).TotalSeconds, 3));
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("lastUpgrade");
            }
            if (machine.Serving is { } s)
            {
                w.WriteStartObject("serving");
                w.WriteNumber("generation", s.Number);
                w.WriteNumber("pid", s.Pid!.Value);
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("serving");
            }
            if (machine.OnProbation is { } p)
            {
                w.WriteStartObject("probation");
                w.WriteNumber("generation", p.Number);
                w.WriteNumber("pid", p.Pid!.Value);
                w.WriteNumber("secondsLeft", Math.Round(machine.ProbationLeft.TotalSeconds, 3));
                w.WriteNumber("lengthSeconds", Math.Round(settings.Policy.Probation.TotalSeconds, 3));
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("probation");
            }
            w.WriteStartArray("generations");
            foreach (var g in machine.Generations)
            {
                w.WriteStartObject();
                w.WriteNumber("generation", g.Number);
                if (g.Pid is { } pid) w.WriteNumber("pid", pid); else w.WriteNull("pid");
                w.WriteString("state", g.State.ToString().ToLowerInvariant());
                w.WriteString("cause", g.Cause.ToString().ToLowerInvariant());
                w.WriteNumber("ageSeconds", Math.Round((now - g.StartedAt).TotalSeconds, 3));
                if (g.Status is { } status) w.WriteString("status", status);
                if (g.Drain is { } drain) w.WriteString("drain", drain); else w.WriteNull("drain");
                if (launches.Started.TryGetValue(g.Number, out var launch))
                {
                    WriteStrings(w, "command", launch.Argv);
                    w.WriteString("directory", launch.Directory);
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("listeners");
            for (var i = 0; i < listeners.Count; i++)
            {
                w.WriteStartObject();
                w.WriteNumber("fd", 3 + i);
                w.WriteString("address", listeners[i].Address);
                w.WriteString("name", listeners[i].Spec.FdName);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteNumber("restarts", machine.Restarts);
            w.WriteNumber("consecutiveFailures", machine.ConsecutiveFailures);
            if (machine.RestartAt is { } at) w.WriteNumber("nextRestartInSeconds", Math.Round(Math.Max(0, (at - now).TotalSeconds), 3));
            else w.WriteNull("nextRestartInSeconds");
            w.WriteBoolean("reloadPending", machine.ReloadPending);
            WriteStrings(w, "command", launches.Command);
            if (launches.NextCommand is { } next) WriteStrings(w, "nextCommand", next); else w.WriteNull("nextCommand");
            w.WriteString("directoryRule", launches.DirectoryRule);
            if (launches.LastRefusal is { } lastRefusal)
            {
                w.WriteStartObject("lastRefusedReload");
                w.WriteString("reason", lastRefusal.Reason);
                w.WriteNumber("secondsAgo", Math.Round((now - lastRefusal.At).TotalSeconds, 3));
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("lastRefusedReload");
            }
            if (launches.Launcher.EnvFile is { } envFile) w.WriteString("envFile", envFile); else w.WriteNull("envFile");
            if (machine.LastReload is { } r)
            {
                w.WriteStartObject("lastReload");
                w.WriteNumber("generation", r.Generation);
                w.WriteBoolean("succeeded", r.Succeeded);
                w.WriteString("message", r.Message);
                w.WriteNumber("secondsAgo", Math.Round((now - r.At).TotalSeconds, 3));
                if (r.TookToReady is { } took) w.WriteNumber("readyAfterSeconds", Math.Round(took.TotalSeconds, 4)); else w.WriteNull("readyAfterSeconds");
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("lastReload");
            }
            w.WriteStartObject("reloads");
            w.WriteNumber("succeeded", machine.Reloads.Succeeded);
            w.WriteNumber("failed", machine.Reloads.Failed);
            w.WriteEndObject();
            var self = SelfFigures.Read();
            w.WriteStartObject("supervisor");
            w.WriteNumber("rssBytes", self.RssBytes);
            w.WriteNumber("managedHeapBytes", self.ManagedHeapBytes);
            w.WriteNumber("managedCommittedBytes", self.ManagedCommittedBytes);
            w.WriteNumber("threads", self.Threads);
            w.WriteNumber("openFds", self.OpenFds);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray()) + "\n";
    }

    private static void WriteStrings(Utf8JsonWriter w, string name, IEnumerable<string> items)
    {
        w.WriteStartArray(name);
        foreach (var item in items) w.WriteStringValue(item);
        w.WriteEndArray();
    }
}
