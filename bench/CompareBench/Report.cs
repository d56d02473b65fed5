// Overview
// --------
// Writes what a run found: bench/results/latest.md (the tables, the machine, the commands and what each
// figure means), bench/results/latest.png (gnuplot: answered requests/s and failed requests/s over time,
// one line per strategy, reload requests marked, one column per workload), and the table between the
// bench markers in README.md, so the README quotes exactly the latest run. The picture's data and
// gnuplot script stay in out/bench/plot/.

using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace CompareBench;

internal sealed class Report(Options options, Paths paths, Machine machine, IReadOnlyList<Workload> workloads, IReadOnlyList<RunResult> runs,
    StartupFigures startup, ThroughputFigures throughput, IdleFigures idle, TimeSpan elapsed)
{
    public const string ReadmeBegin = "<!-- bench:begin (written by make bench from bench/results/latest.md; do not edit) -->";
    public const string ReadmeEnd = "<!-- bench:end -->";

    /// <summary>Each strategy keeps its color and point type in the picture, whichever ran.</summary>
    private static readonly string[] StrategyOrder = ["gsupervisor-hello", "gsupervisor-stock", "server-starter", "restart", "reuseport"];
    private static readonly string[] Colors = ["#1a9850", "#4575b4", "#e08214", "#d73027", "#8856a7", "#555555"];
    private readonly DateTime _finished = DateTime.UtcNow;
    private readonly string _endLoad = Machine.CurrentLoadAverage();

    public string MarkdownPath => Path.Combine(paths.ResultsDirectory, "latest.md");
    public string PicturePath => Path.Combine(paths.ResultsDirectory, "latest.png");
    public bool ReadmeUpdated { get; private set; }

    public void Write()
    {
        Directory.CreateDirectory(paths.ResultsDirectory);
        Plot();
        File.WriteAllText(MarkdownPath, Markdown());
        if (options.UpdateReadme) ReadmeUpdated = UpdateReadme(Path.Combine(paths.Root, "README.md"));
    }

    private static string F(double value, string format) =>
        double.IsNaN(value) ? "n/a" : value.ToString(format, CultureInfo.InvariantCulture);

    private static string N(long value) => value.ToString("N0", CultureInfo.InvariantCulture);

    private static string Duration(TimeSpan t) => $"{(int)t.TotalMinutes} min {t.Seconds} s";

    private IEnumerable<RunResult> RunsOf(Workload workload) => runs.Where(r => r.Workload == workload);

    private string Markdown()
    {
        var md = new StringBuilder();
        md.AppendLine("# gsupervisor against the alternatives: what a reload costs");
        md.AppendLine();
        md.AppendLine($"Written by `make bench` (bench/CompareBench) on {_finished:yyyy-MM-dd HH:mm} UTC; the whole run took {Duration(elapsed)}. " +
            "Every figure comes from that one run: the same app, the same load and the same machine for every strategy, one after the other. " +
            "The machine is shared and noisy, so compare the strategies with each other, not with another run.");
        md.AppendLine();
        md.AppendLine("![answered and failed requests per second over time, one line per strategy, reloads marked](latest.png)");
        md.AppendLine();
        foreach (var workload in workloads)
        {
            md.AppendLine($"## {Capitalize(workload.Label)} (wrk, {options.Reloads} reloads {F(options.Interval, "0.#")} s apart)");
            md.AppendLine();
            md.Append(MainTable(workload));
            md.AppendLine();
        }

        md.AppendLine("## gsupervisor's own figures");
        md.AppendLine();
        md.AppendLine("| figure | value | how |");
        md.AppendLine("| --- | ---: | --- |");
        md.AppendLine($"| HelloKestrel's throughput under gsupervisor ÷ run directly | **{F(throughput.Ratio, "0.000")}** | " +
            $"plain `wrk -t 2 -c 50` keep-alive on the same app, {throughput.Pairs.Count} rounds of {throughput.Each.TotalSeconds:F0} s each way in ABBA order after a 3 s warm-up of each; " +
            $"the median of the rounds' ratios (range {F(throughput.Min, "0.00")}–{F(throughput.Max, "0.00")}); req/s supervised / direct: " +
            string.Join(", ", throughput.Pairs.Select(p => $"{p.Supervised:F0} / {p.Direct:F0}")) + " |");
        md.AppendLine($"| start-up to first child spawn | {F(startup.Median, "0")} ms | from starting `gsupervisor` (the framework-dependent build of `make build`) to its `generation 1 (pid P) started` line; median of {startup.Samples.Count} (" +
            string.Join(", ", startup.Samples.Select(s => F(s, "0"))) + " ms) |");
        md.AppendLine($"| idle CPU | {F(idle.CpuSeconds, "0.00")} s over {F(idle.Seconds, "0")} s | user + system time of the gsupervisor process (/proc/PID/stat) with one idle HelloKestrel child, nothing else running in the bench |");
        md.AppendLine($"| RSS | {F(idle.RssMiB, "0.0")} MiB | VmRSS of the gsupervisor process at the end of that quiet minute |");
        md.AppendLine();

        md.AppendLine("## Where the failures come from");
        md.AppendLine();
        md.AppendLine("A failed request is one that got no answer (its connection was refused, reset or closed before the answer) or got a non-2xx answer. " +
            "wrk's own counters, for the whole wrk run including its warm-up, are shown beside as a cross-check. They count events on connections rather than requests: " +
            "a refused connection is a failed write, and a connection closed or reset by the server is a read error even when no request was on it (so nothing was lost); " +
            "wrk's non-2xx are answers from status 400 up.");
        md.AppendLine();
        md.AppendLine("| strategy | load | unanswered | non-2xx | failed inside reload windows | wrk socket errors (connect/read/write/timeout) | wrk non-2xx | reload → new process serving, ms (median) |");
        md.AppendLine("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |");
        foreach (var run in runs)
        {
            var s = run.Stats;
            var w = run.Wrk;
            md.AppendLine($"| {run.Strategy.Label} | {run.Workload.Short} | {N(s.Unanswered)} | {N(s.Non2xx)} | {N(s.FailedInWindows)} | " +
                $"{N(w.Connect)}/{N(w.Read)}/{N(w.Write)}/{N(w.Timeout)} | {N(w.Status)} | {F(s.NewServingMedianMs, "0")} |");
        }
        md.AppendLine();

        md.AppendLine("## How it was run");
        md.AppendLine();
        md.AppendLine($"- Machine: {machine.Cores} cores ({machine.Cpu}), {machine.MemoryGiB:F0} GiB, {machine.Os}, Linux {machine.Kernel}; " +
            $"{machine.Runtime} (SDK {machine.Sdk}); {machine.Wrk}; Server::Starter {machine.ServerStarter.Replace("start_server version ", "", StringComparison.Ordinal)} (Debian's `start_server`); {machine.Gnuplot}. " +
            $"Load average {machine.LoadAverage} at the start, {_endLoad} at the end (other jobs share this machine).");
        md.AppendLine("- Command: `make bench` — installs wrk, libserver-starter-perl and gnuplot-nox from Debian if missing, runs `make build`, then " +
            $"`dotnet bench/CompareBench/bin/Release/net10.0/CompareBench.dll --reloads {options.Reloads} --interval {F(options.Interval, "0.#")}`. Logs, wrk output and the raw timelines are left in out/bench/.");
        md.AppendLine("- Everything listens on and is loaded over 127.0.0.1, on a port picked free at run time. Every server answers `GET /` with the same short body, `pid=P gen=G`.");
        md.AppendLine();
        md.AppendLine("| strategy | run as | reload |");
        md.AppendLine("| --- | --- | --- |");
        foreach (var strategy in runs.Select(r => r.Strategy).DistinctBy(s => s.Key))
            md.AppendLine($"| {strategy.Label} | {strategy.Command} | {strategy.ReloadHow} |");
        md.AppendLine();
        md.AppendLine("- HelloKestrel (examples/HelloKestrel) uses the gsupervisor client library (`UseGSupervisor()`): it takes the socket over the handoff socket, reports `READY=1` when started, " +
            "and on the stop signal stops accepting and answers with `Connection: close` for 2 s before Kestrel's graceful stop. " +
            "The stock app (bench/StockKestrel) is plain ASP.NET Core with no gsupervisor code: Kestrel's own `UseSystemd()` under gsupervisor (`LISTEN_FDS`), " +
            "`ListenHandle` of the fd in `SERVER_STARTER_PORT` under start_server, or a socket it binds itself (with `SO_REUSEPORT` for the overlap); it stops with Kestrel's graceful stop on SIGTERM.");
        md.AppendLine($"- Readiness: neither gsupervisor nor start_server can know when the stock app is ready, so both wait a fixed {Strategy.ReadyDelaySeconds} s " +
            $"(`--ready delay:{Strategy.ReadyDelaySeconds}s`; `--interval={Strategy.ReadyDelaySeconds}`, start_server's minimum being whole seconds) before stopping the old process. " +
            "The restart and overlap strategies are driven by the bench as a careful deploy script would: it polls the port every 20 ms with a fresh connection until the new process " +
            "(recognised by the pid in the answer) answers. HelloKestrel reports `READY=1` itself (`--ready notify`).");
        md.AppendLine($"- Load: wrk with timeline.lua (bench/CompareBench), `wrk -t 50 -c 50 --timeout 10s -s timeline.lua` (plus `-H \"Connection: close\"` for the second load): " +
            "one connection per wrk thread, each sending its next request as soon as the last one is answered, so the script can time every request and see every request that got no answer. " +
            "After a failed request a connection pauses 10 ms before its next one, as a client backs off (without it wrk retries a refused connection at once, " +
            "tens of thousands of times a second, and that busy loop starved the restarting server for seconds). While nothing listens, each connection fails about 100 times a second, " +
            "so a failure count there measures the outage times the client's retry rate; the longest-silence column measures the outage itself.");
        md.AppendLine($"- Schedule: wrk starts (time 0); {F(options.WarmUp, "0.#")} s of warm-up; reload k is requested at {F(options.WarmUp, "0.#")} s + (k−1) × {F(options.Interval, "0.#")} s " +
            $"(or as soon as reload k−1 is complete, if later); the run ends {F(options.Interval, "0.#")} s after the last reload was due (at least 1 s after it completed). " +
            "The figures count from the end of the warm-up to the end of the run.");
        md.AppendLine("- A reload window runs from the reload request until the old process is gone and the new one serves, whichever is later (for restart, the new one serves last). " +
            "Figures inside reload windows are taken over the 100 ms buckets the windows touch.");
        md.AppendLine();
        md.AppendLine("What each column means:");
        md.AppendLine();
        md.AppendLine("- **requests**: requests sent and finished (answered, or failed) in the measured time. **failed**: no answer, or a non-2xx answer. **req/s**: 2xx answers per second.");
        md.AppendLine("- **p99 / max ms**: latency of answered requests, from the moment wrk asks for the request to be written until the answer is parsed, measured per request by timeline.lua " +
            "(p99 is the middle of its 1 % wide histogram bin; max is exact); over the whole measured time and inside reload windows.");
        md.AppendLine("- **longest silence ms**: the longest stretch inside a reload window in which not one request was answered with 2xx, in whole 100 ms buckets (0 = every 100 ms had answers).");
        md.AppendLine("- **reload → old gone ms**: median time from the reload request until the old process had exited (gsupervisor's and start_server's own log lines, or the bench seeing its child exit).");
        md.AppendLine("- **supervisor RSS / CPU**: the supervising process (gsupervisor; start_server's perl) at the end of the run: VmRSS (peak VmHWM in brackets) and user + system CPU time since it started, " +
            "children excluded. The restart and overlap strategies have no supervisor: a deploy script (here, the bench) does the work, so n/a.");
        md.AppendLine("- **The picture**: per 200 ms, 2xx answers per second (top) and failed requests per second on a log scale (bottom; no point = no failure); " +
            "dashed lines mark the reload requests (all strategies follow the same schedule).");
        return md.ToString();
    }

    private string MainTable(Workload workload)
    {
        var md = new StringBuilder();
        md.AppendLine("| strategy | requests | failed | req/s | p99 ms | max ms | p99 ms in reloads | max ms in reloads | longest silence ms | reload → old gone ms | supervisor RSS MiB | supervisor CPU s |");
        md.AppendLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var run in RunsOf(workload))
        {
            var s = run.Stats;
            var sup = run.Supervisor;
            md.AppendLine($"| {run.Strategy.Label} | {N(s.Requests)} | **{N(s.Failed)}** | {F(s.RequestsPerSecond, "N0")} | {F(s.P99, "0.0")} | {F(s.Max, "0")} | " +
                $"{F(s.WindowP99, "0.0")} | {F(s.WindowMax, "0")} | {F(s.LongestSilenceMs, "0")} | {F(s.OldGoneMedianMs, "0")} | " +
                (sup is null ? "n/a | n/a |" : $"{F(sup.RssMiB, "0.0")} ({F(sup.PeakRssMiB, "0.0")}) | {F(sup.CpuSeconds, "0.00")} |"));
        }
        return md.ToString();
    }

    private static string Capitalize(string s) => s.Length == 0 || s[0] == '`' ? s : char.ToUpperInvariant(s[0]) + s[1..];

    /// <summary>The README's part: both loads in one table, and gsupervisor's own figures in a sentence.</summary>
    public string ReadmeBlock()
    {
        var md = new StringBuilder();
        md.AppendLine(ReadmeBegin);
        md.AppendLine($"Measured by `make bench` on {_finished:yyyy-MM-dd} ({machine.Cores} cores, loopback, {options.Reloads} reloads per row under wrk with 50 connections; " +
            "full tables, definitions and commands in [bench/results/latest.md](bench/results/latest.md)):");
        md.AppendLine();
        md.AppendLine("| strategy | load | requests | failed | p99 ms in reloads | max ms in reloads | longest silence ms | reload → old gone ms | supervisor RSS MiB / CPU s |");
        md.AppendLine("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var run in runs)
        {
            var s = run.Stats;
            var sup = run.Supervisor;
            md.AppendLine($"| {run.Strategy.Label} | {run.Workload.Short} | {N(s.Requests)} | **{N(s.Failed)}** | " +
                $"{F(s.WindowP99, "0.0")} | {F(s.WindowMax, "0")} | {F(s.LongestSilenceMs, "0")} | {F(s.OldGoneMedianMs, "0")} | " +
                (sup is null ? "n/a |" : $"{F(sup.RssMiB, "0.0")} / {F(sup.CpuSeconds, "0.00")} |"));
        }
        md.AppendLine();
        md.AppendLine($"HelloKestrel serves {F(throughput.Ratio, "0.000")} times as many requests per second under gsupervisor as run directly (the supervisor is not in the data path). " +
            $"gsupervisor spawns its first child {F(startup.Median, "0")} ms after it is started and used {F(idle.CpuSeconds, "0.00")} s of CPU over {F(idle.Seconds, "0")} idle seconds, at {F(idle.RssMiB, "0.0")} MiB RSS.");
        md.AppendLine();
        md.AppendLine("![answered and failed requests per second over time during the reloads, one line per strategy](bench/results/latest.png)");
        md.Append(ReadmeEnd);
        return md.ToString();
    }

    private bool UpdateReadme(string readme)
    {
        var text = File.ReadAllText(readme);
        var begin = text.IndexOf(ReadmeBegin, StringComparison.Ordinal);
        var end = text.IndexOf(ReadmeEnd, StringComparison.Ordinal);
        if (begin < 0 || end < begin) return false;
        File.WriteAllText(readme, text[..begin] + ReadmeBlock() + text[(end + ReadmeEnd.Length)..]);
        return true;
    }

    private void Plot()
    {
        var dir = Path.Combine(paths.OutDirectory, "plot");
        Directory.CreateDirectory(dir);
        const int Aggregate = 2; // 100 ms buckets per plotted point
        var strategies = runs.Select(r => r.Strategy).DistinctBy(s => s.Key).ToList();
        int IndexOf(Strategy strategy) => Array.IndexOf(StrategyOrder, strategy.Key) is var i and >= 0 ? i : StrategyOrder.Length;
        var pointTypes = new[] { 7, 5, 9, 11, 13, 3 };

        // data: per run, 2xx answers/s and failed requests/s per 200 ms (failures only where there were any)
        var maxRate = 0.0;
        var files = new Dictionary<RunResult, (string Rate, string Failures)>();
        foreach (var run in runs)
        {
            var rate = new StringBuilder();
            var failures = new StringBuilder();
            var first = Timeline.BucketOf(run.LoadStart);
            var last = Timeline.BucketOf(run.SpanEnd) - 1;
            var scale = 1e6 / (Aggregate * Timeline.BucketMicroseconds);
            for (var b = first; b + Aggregate - 1 <= last; b += Aggregate)
            {
                long ok = 0, failed = 0;
                for (var i = b; i < b + Aggregate; i++)
                    if (run.Timeline.Buckets.TryGetValue(i, out var bucket))
                    {
                        ok += bucket.Ok;
                        failed += bucket.Failed + bucket.Other;
                    }
                var t = (b - first + Aggregate / 2.0) * Timeline.BucketMicroseconds / 1e6;
                rate.AppendLine($"{F(t, "0.00")} {F(ok * scale, "0")}");
                maxRate = Math.Max(maxRate, ok * scale);
                if (failed > 0) failures.AppendLine($"{F(t, "0.00")} {F(failed * scale, "0")}");
            }
            var name = Path.Combine(dir, $"{run.Workload.Key}-{run.Strategy.Key}");
            File.WriteAllText(name + ".rate", rate.ToString());
            File.WriteAllText(name + ".failed", failures.Length == 0 ? "NaN NaN\n" : failures.ToString());
            files[run] = (name + ".rate", name + ".failed");
        }

        string Quote(string s) => s.Replace("'", "''", StringComparison.Ordinal);
        string Plain(string s) => Quote(s.Replace("`", "", StringComparison.Ordinal));
        string Marks(Workload workload)
        {
            var marks = new StringBuilder("unset arrow\n");
            var n = 1;
            foreach (var run in RunsOf(workload))
            foreach (var reload in run.Reloads)
            {
                var x = F(run.Seconds(reload.RequestedAt), "0.00");
                marks.AppendLine($"set arrow {n++} from {x}, graph 0 to {x}, graph 1 nohead lc rgb '#999999' dt 2 lw 1 back");
            }
            return marks.ToString();
        }

        var gp = new StringBuilder();
        var terminal = GnuplotHas("pngcairo") ? "pngcairo size 1600,1000 font 'DejaVu Sans,11'" : "png size 1600,1000";
        gp.AppendLine($"set terminal {terminal}");
        gp.AppendLine($"set output '{Quote(PicturePath)}'");
        gp.AppendLine("set datafile missing 'NaN'");
        gp.AppendLine($"set multiplot title '{options.Reloads} reloads under wrk load (50 connections) on {machine.Cores} cores, {_finished:yyyy-MM-dd}: " +
            "each strategy in turn, on the same schedule' noenhanced");
        gp.AppendLine("set grid ytics lc rgb '#e0e0e0'");
        gp.AppendLine($"set xrange [0:{F(options.WarmUp + options.Reloads * options.Interval + 1, "0.#")}]");
        gp.AppendLine("unset key");
        gp.AppendLine("set lmargin 10; set rmargin 3");
        for (var column = 0; column < workloads.Count; column++)
        {
            var workload = workloads[column];
            var x = F((double)column / workloads.Count, "0.###");
            var width = F(1.0 / workloads.Count, "0.###");
            // top: 2xx answers per second
            gp.AppendLine($"set origin {x},0.5; set size {width},0.45");
            gp.AppendLine($"set title '{Plain(Capitalize(workload.Label))}' noenhanced");
            gp.AppendLine("unset logscale y; set format y '%.0s%c'; set ylabel '2xx answers / s'");
            gp.AppendLine($"set yrange [0:{F(maxRate * 1.05, "0")}]");
            gp.AppendLine("set format x ''; unset xlabel");
            gp.Append(Marks(workload));
            gp.AppendLine("plot " + string.Join(", \\\n     ", RunsOf(workload).Select(r =>
                $"'{Quote(files[r].Rate)}' using 1:2 with lines lw 1.5 lc rgb '{Colors[IndexOf(r.Strategy) % Colors.Length]}' notitle")));
            // bottom: failed requests per second, log scale
            gp.AppendLine($"set origin {x},0.12; set size {width},0.37");
            gp.AppendLine("unset title");
            gp.AppendLine("set logscale y; set format y '10^{%T}'; set ylabel 'failed requests / s'");
            gp.AppendLine("set yrange [1:*]");
            gp.AppendLine("set format x '%g'; set xlabel 'seconds since the load started (per 200 ms; dashed: reload requested)'");
            gp.Append(Marks(workload));
            gp.AppendLine("plot " + string.Join(", \\\n     ", RunsOf(workload).Select(r =>
                $"'{Quote(files[r].Failures)}' using 1:2 with points pt {pointTypes[IndexOf(r.Strategy) % pointTypes.Length]} ps 1.2 lc rgb '{Colors[IndexOf(r.Strategy) % Colors.Length]}' notitle")));
        }
        // the legend, once, below both columns: each strategy with its failed totals per load
        gp.AppendLine("set origin 0,0; set size 1,0.1");
        gp.AppendLine("unset title; unset xlabel; unset ylabel; unset logscale y; unset arrow; unset grid; unset border; unset tics");
        gp.AppendLine("set xrange [0:1]; set yrange [0:1]");
        gp.AppendLine("set key center center horizontal Left reverse maxrows 3 width 3 samplen 3 noenhanced");
        gp.AppendLine("plot " + string.Join(", \\\n     ", strategies.Select(s =>
        {
            var i = IndexOf(s);
            var failed = string.Join(", ", runs.Where(r => r.Strategy.Key == s.Key).Select(r => $"{N(r.Stats.Failed)} {Plain(r.Workload.Short)}"));
            return $"NaN with linespoints lw 2 pt {pointTypes[i % pointTypes.Length]} ps 1.2 lc rgb '{Colors[i % Colors.Length]}' title '{Quote(s.Label)} (failed: {failed})'";
        })));
        gp.AppendLine("unset multiplot");
        var script = Path.Combine(dir, "latest.gp");
        File.WriteAllText(script, gp.ToString());
        var (status, output) = RunGnuplot(script);
        if (status != 0) throw new BenchException($"gnuplot failed (status {status}) on {script}:\n{output}");
    }

    private static bool GnuplotHas(string terminal) => RunGnuplot("-e", $"set terminal {terminal}").Status == 0;

    private static (int Status, string Output) RunGnuplot(params string[] arguments)
    {
        var info = new ProcessStartInfo("gnuplot") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var output = process.StandardError.ReadToEnd() + process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output);
    }
}
