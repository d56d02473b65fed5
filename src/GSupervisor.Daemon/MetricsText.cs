// Overview
// --------
// The Prometheus text exposition format (version 0.0.4) of what the supervisor knows: its build, the serving
// generation, the generations by state, reloads by result with a histogram of their time to ready, crash
// restarts, in-place upgrades, and its own memory and fds. Rendered on the event loop, per scrape, from the state
// machine (nothing is counted twice: `status` reads the same numbers). Written by hand rather than with
// prometheus-net: see the README's Metrics section for the measurement behind that.

using System.Globalization;
using System.Text;
using GSupervisor.Core;
using GSupervisor.Daemon.Os;

namespace GSupervisor.Daemon;

internal static class MetricsText
{
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    public static string Render(SupervisorStateMachine machine, int upgrades)
    {
        var sb = new StringBuilder();
        Family(sb, "gsupervisor_build_info", "gauge", "The running gsupervisor's version (in place upgrades change it).");
        Sample(sb, "gsupervisor_build_info", $"version=\"{Escape(CommandLineReader.Version)}\"", 1);

        Family(sb, "gsupervisor_serving_generation", "gauge", "The number of the generation that serves; 0 when none does.");
        Sample(sb, "gsupervisor_serving_generation", null, machine.Serving?.Number ?? 0);

        Family(sb, "gsupervisor_generations", "gauge", "Live generations (child process groups) by state.");
        foreach (var state in new[] { GenerationState.Starting, GenerationState.Probation, GenerationState.Ready, GenerationState.Draining })
            Sample(sb, "gsupervisor_generations", $"state=\"{state.ToString().ToLowerInvariant()}\"", machine.Generations.Count(g => g.State == state));

        var reloads = machine.Reloads;
        Family(sb, "gsupervisor_reloads_total", "counter", "Reloads that finished, by result (failed: rolled back, the old generation kept serving).");
        Sample(sb, "gsupervisor_reloads_total", "result=\"succeeded\"", reloads.Succeeded);
        Sample(sb, "gsupervisor_reloads_total", "result=\"failed\"", reloads.Failed);

        Family(sb, "gsupervisor_reload_duration_seconds", "histogram", "Time from a successful reload's new generation starting to its READY.");
        long cumulative = 0;
        for (var i = 0; i < ReloadStatistics.BucketBounds.Count; i++)
        {
            cumulative += reloads.BucketCounts[i];
            Sample(sb, "gsupervisor_reload_duration_seconds_bucket", $"le=\"{ReloadStatistics.BucketBounds[i].ToString(CultureInfo.InvariantCulture)}\"", cumulative);
        }
        Sample(sb, "gsupervisor_reload_duration_seconds_bucket", "le=\"+Inf\"", reloads.DurationCount);
        Sample(sb, "gsupervisor_reload_duration_seconds_sum", null, reloads.DurationSum.TotalSeconds);
        Sample(sb, "gsupervisor_reload_duration_seconds_count", null, reloads.DurationCount);

        Family(sb, "gsupervisor_restarts_total", "counter", "Generations started to replace one that died while serving.");
        Sample(sb, "gsupervisor_restarts_total", null, machine.Restarts);

        Family(sb, "gsupervisor_upgrades_total", "counter", "In-place upgrades of the supervisor since it started (gsupervisor upgrade).");
        Sample(sb, "gsupervisor_upgrades_total", null, upgrades);

        Family(sb, "gsupervisor_uptime_seconds", "gauge", "Time since the supervisor started (across in-place upgrades).");
        Sample(sb, "gsupervisor_uptime_seconds", null, Math.Round(machine.Now.TotalSeconds, 3));

        var self = SelfFigures.Read();
        Family(sb, "process_resident_memory_bytes", "gauge", "The supervisor's resident memory.");
        Sample(sb, "process_resident_memory_bytes", null, self.RssBytes);
        Family(sb, "process_open_fds", "gauge", "The supervisor's open file descriptors.");
        Sample(sb, "process_open_fds", null, self.OpenFds);
        return sb.ToString();
    }

    private static void Family(StringBuilder sb, string name, string type, string help) =>
        sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n').Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');

    private static void Sample(StringBuilder sb, string name, string? labels, double value)
    {
        sb.Append(name);
        if (labels is not null) sb.Append('{').Append(labels).Append('}');
        sb.Append(' ').Append(value.ToString("R", CultureInfo.InvariantCulture)).Append('\n');
    }

    private static string Escape(string value) => value.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");
}
