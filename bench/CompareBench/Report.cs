// Overview
// --------
// Writes what a run found: bench/results/latest.md (the tables, the machine, the commands and what each
// figure means), bench/results/latest.png (gnuplot: answered requests/s and failed requests/s over time,
// a row per strategy, a column per workload, reload requests marked), and the table between the
// bench markers in README.md, so the README quotes exactly the latest run. The picture's data and
// gnuplot script stay in out/bench/plot/.

using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace CompareBench;

internal sealed class Report(Findings findings, Paths paths, IReadOnlyList<Workload> workloads, IReadOnlyList<RunResult> runs)
{
    private readonly Options _options = findings.Options;
    private readonly Machine _machine = findings.Machine;
    private readonly StartupFigures _startup = findings.Startup;
    private readonly ThroughputFigures _throughput = findings.Throughput;
    private readonly IdleFigures _idle = findings.Idle;
    private readonly FootprintFigures? _footprint = findings.Footprint; // null in findings saved before it was measured
    private readonly TimeSpan _elapsed = TimeSpan.FromSeconds(findings.ElapsedSeconds);
    private readonly DateTime _finished = findings.Finished;
    private readonly string _endLoad = findings.EndLoadAverage;

    public const string ReadmeBegin = "<!-- bench:begin (written by make bench from bench/results/latest.md; do not edit) -->";
    public const string ReadmeEnd = "<!-- bench:end -->";

    /// <summary>Each strategy keeps its color and point type in the picture, whichever ran.</summary>
    private static readonly string[] StrategyOrder = ["gsupervisor-hello", "gsupervisor-stock-injected", "gsupervisor-stock", "server-starter", "restart", "reuseport"];
    private static readonly string[] Colors = ["#1a9850", "#4575b4", "#e08214", "#d73027", "#8856a7", "#555555"];

    public string MarkdownPath => Path.Combine(paths.ResultsDirectory, "latest.md");
    public string PicturePath => Path.Combine(paths.ResultsDirectory, "latest.png");
    public bool ReadmeUpdated { get; private set; }

    public void Write()
    {
        Directory.CreateDirectory(paths.ResultsDirectory);
        Plot();
        File.WriteAllText(MarkdownPath, Markdown());
        if (_options.UpdateReadme) ReadmeUpdated = UpdateReadme(Path.Combine(paths.Root, "README.md"));
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
        md.AppendLine($"Written by `make bench` (bench/CompareBench) on {_finished:yyyy-MM-dd HH:mm} UTC; the whole run took {Duration(_elapsed)}. " +
            "Every figure comes from that one run: the same app, the same load and the same machine for every strategy, one after the other. " +
            "The machine is shared and noisy, so compare the strategies with each other, not with another run.");
        md.AppendLine();
        md.AppendLine("![answered and failed requests per second over time, one line per strategy, reloads marked](latest.png)");
        md.AppendLine();
        foreach (var workload in workloads)
        {
            md.AppendLine($"## {Capitalize(workload.Label)} (wrk, {_options.Reloads} reloads {F(_options.Interval, "0.#")} s apart)");
            md.AppendLine();
            md.Append(MainTable(workload));
            md.AppendLine();
        }

        md.AppendLine("## gsupervisor's own figures");
        md.AppendLine();
        md.AppendLine("| figure | value | how |");
        md.AppendLine("| --- | ---: | --- |");
        md.AppendLine($"| HelloKestrel's throughput under gsupervisor ÷ run directly | **{F(_throughput.Ratio, "0.00")}** | " +
            $"plain `wrk -t 2 -c 50` keep-alive on the same app, run directly (`--urls`) and under gsupervisor, both up at once; after a 5 s warm-up of each, " +
            $"{_throughput.Pairs.Count} rounds of {_throughput.Each.TotalSeconds:F0} s each way in ABBA order; the median of the rounds' ratios (range {F(_throughput.Min, "0.00")}–{F(_throughput.Max, "0.00")}; " +
            $"mean {_throughput.Supervised:N0} req/s supervised, {_throughput.Direct:N0} direct) |");
        md.AppendLine($"| start-up to first child spawn | {F(_startup.Median, "0")} ms | from starting `gsupervisor` (the Native AOT binary as `make deb` installs it) to its `generation 1 (pid P) started` line; median of {_startup.Samples.Count} (" +
            string.Join(", ", _startup.Samples.Select(s => F(s, "0"))) + " ms) |");
        md.AppendLine($"| idle CPU | {F(_idle.CpuSeconds, "0.00")} s over {F(_idle.Seconds, "0")} s | user + system time of the gsupervisor process (/proc/PID/stat) with one idle HelloKestrel child, nothing else running in the bench |");
        md.AppendLine($"| RSS | {F(_idle.RssMiB, "0.0")} MiB | VmRSS of the gsupervisor process at the end of that quiet minute |");
        md.AppendLine();

        if (_footprint is { } footprint) FootprintSection(md, footprint);

        md.AppendLine("## Where the failures come from");
        md.AppendLine();
        md.AppendLine("A failed request is one that got no answer (its connection was refused, reset or closed before the answer) or got a non-2xx answer. " +
            "wrk's own counters, for the whole wrk run including its warm-up, are shown beside as a cross-check. They count events on connections rather than requests: " +
            "a refused connection is a failed write, and a connection closed or reset by the server is a read error even when no request was on it (so nothing was lost); " +
            "wrk's non-2xx are answers from status 400 up.");
        md.AppendLine();
        md.AppendLine("| strategy | load | unanswered | non-2xx | failed inside reload windows | wrk socket errors (connect/read/write/timeout) | wrk non-2xx | reload → new process serving, ms (median) | load average when the run began |");
        md.AppendLine("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |");
        foreach (var run in runs)
        {
            var s = run.Stats;
            var w = run.Wrk;
            md.AppendLine($"| {run.Strategy.Label} | {run.Workload.Short} | {N(s.Unanswered)} | {N(s.Non2xx)} | {N(s.FailedInWindows)} | " +
                $"{N(w.Connect)}/{N(w.Read)}/{N(w.Write)}/{N(w.Timeout)} | {N(w.Status)} | {F(s.NewServingMedianMs, "0")} | {run.LoadAverage} |");
        }
        md.AppendLine();

        md.AppendLine("## How it was run");
        md.AppendLine();
        md.AppendLine($"- Machine: {_machine.Cores} cores ({_machine.Cpu}), {_machine.MemoryGiB:F0} GiB, {_machine.Os}, Linux {_machine.Kernel}; " +
            $"{_machine.Runtime} (SDK {_machine.Sdk}); {_machine.Wrk}; Server::Starter {_machine.ServerStarter.Replace("start_server version ", "", StringComparison.Ordinal)} (Debian's `start_server`); {_machine.Gnuplot}. " +
            $"Load average {_machine.LoadAverage} at the start, {_endLoad} at the end (other jobs share this machine).");
        md.AppendLine("- Command: `make bench` — installs wrk, libserver-starter-perl and gnuplot-nox from Debian if missing, runs `make build`, then " +
            $"`dotnet bench/CompareBench/bin/Release/net10.0/CompareBench.dll --reloads {_options.Reloads} --interval {F(_options.Interval, "0.#")}`. Logs, wrk output and the raw timelines are left in out/bench/.");
        md.AppendLine("- Everything listens on and is loaded over 127.0.0.1, on a port picked free at run time. Every server answers `GET /` with the same short body, `pid=P gen=G`.");
        md.AppendLine();
        md.AppendLine("| strategy | run as | reload |");
        md.AppendLine("| --- | --- | --- |");
        foreach (var strategy in runs.Select(r => r.Strategy).DistinctBy(s => s.Key))
            md.AppendLine($"| {strategy.Label} | {strategy.Command} | {strategy.ReloadHow} |");
        md.AppendLine();
        md.AppendLine("- HelloKestrel (examples/HelloKestrel) uses the gsupervisor client library (`UseGSupervisor()`): it takes the socket over the handoff socket, reports `READY=1` when started, " +
            "and on the stop signal stops accepting and answers with `Connection: close` for 2 s before Kestrel's graceful stop. " +
            "The stock app (bench/StockKestrel) is plain ASP.NET Core with no gsupervisor code: Kestrel's own `UseSystemd()` under gsupervisor --no-inject (`LISTEN_FDS`), " +
            "`ListenHandle` of the fd in `SERVER_STARTER_PORT` under start_server, or a socket it binds itself (with `SO_REUSEPORT` for the overlap); it stops with Kestrel's graceful stop on SIGTERM. " +
            "Under gsupervisor without --no-inject (\"injected\"), the same unmodified app gets what HelloKestrel has from gsupervisor's startup hook (`DOTNET_STARTUP_HOOKS`): the sockets, `READY=1` and the drain.");
        md.AppendLine($"- Readiness: without the injected integration, neither gsupervisor nor start_server can know when the stock app is ready, so both wait a fixed {Strategy.ReadyDelaySeconds} s " +
            $"(`--ready delay:{Strategy.ReadyDelaySeconds}s`; `--interval={Strategy.ReadyDelaySeconds}`, which start_server takes in whole seconds) before stopping the old process. " +
            "The restart and overlap strategies are driven by the bench as a careful deploy script would: it polls the port every 20 ms with a fresh connection until the new process " +
            "(recognised by the pid in the answer) answers. HelloKestrel and the injected stock app report `READY=1` (`--ready notify`).");
        md.AppendLine($"- Load: wrk with timeline.lua (bench/CompareBench), `wrk -t 50 -c 50 -d 900s --timeout 10s -s timeline.lua URL` (plus `-H \"Connection: close\"` for the second load), stopped by the bench with SIGINT at the end of the run: " +
            "one connection per wrk thread, each sending its next request as soon as the last one is answered, so the script can time every request and see every request that got no answer. " +
            "After a failed request a connection pauses 10 ms before its next one, as a client backs off (without it wrk retries a refused connection at once, " +
            "tens of thousands of times a second, and that busy loop starved the restarting server for seconds). While nothing listens, each connection fails about 100 times a second, " +
            "so a failure count there measures the outage times the client's retry rate; the longest-silence column measures the outage itself.");
        md.AppendLine($"- Schedule: wrk starts (time 0); {F(_options.WarmUp, "0.#")} s of warm-up; reload k is requested at {F(_options.WarmUp, "0.#")} s + (k−1) × {F(_options.Interval, "0.#")} s " +
            $"(or as soon as reload k−1 is complete, if later); the run ends {F(_options.Interval, "0.#")} s after the last reload was due (at least 1 s after it completed). " +
            "The figures count from the end of the warm-up to the end of the run. The runs go in the order of the tables, all strategies under keep-alive and then all under `Connection: close`; " +
            "before them the start-up and throughput measurements, after them the idle minute.");
        md.AppendLine("- A reload window runs from the reload request until the old process is gone and the new one serves, whichever is later (for restart, the new one serves last). " +
            "Figures inside reload windows are taken over the 100 ms buckets the windows touch.");
        md.AppendLine();
        md.AppendLine("What each column means:");
        md.AppendLine();
        md.AppendLine("- **requests**: requests sent and finished (answered, or failed) in the measured time. **failed**: no answer, or a non-2xx answer. **req/s**: 2xx answers per second.");
        md.AppendLine("- **p99 / max ms**: latency of answered requests, from the moment wrk asks for the request to be written (on an open connection: a new connection's handshake is not included) " +
            "until the answer is parsed, measured per request by timeline.lua " +
            "(p99 is the middle of its 1 % wide histogram bin; max is exact); over the whole measured time and inside reload windows.");
        md.AppendLine("- **longest silence ms**: the longest stretch inside a reload window in which not one request was answered with 2xx, in whole 100 ms buckets (0 = every 100 ms had answers).");
        md.AppendLine("- **reload → old gone ms**: median time from the reload request until the old process had exited (gsupervisor's and start_server's own log lines, or the bench seeing its child exit).");
        md.AppendLine("- **supervisor RSS / CPU**: the supervising process (gsupervisor; start_server's perl): VmRSS at the end of the run (peak VmHWM in brackets), " +
            "and the user + system CPU time it used from the start of the load to the end of the run (warm-up and reloads; its own start-up before that not included), children excluded. " +
            "The restart and overlap strategies have no supervisor: a deploy script (here, the bench) does the work, so n/a. The load average column shows how busy the shared machine was.");
        md.AppendLine("- **The picture**: a row per strategy, a column per load. Per 100 ms: 2xx answers per second (line, left axis, the same scale along a column) " +
            "and failed requests per second (dots, right axis, log scale; no dot = no failure). Dashed lines mark the strategy's reload requests (all follow the same schedule).");
        return md.ToString();
    }

    private static void FootprintSection(StringBuilder md, FootprintFigures f)
    {
        md.AppendLine("## How light it is");
        md.AppendLine();
        md.Append(FootprintTable(f));
        md.AppendLine();
        md.AppendLine($"- `--version`: wall time from `posix_spawn` to the exit of `gsupervisor --version` and of `start_server --version`, stdout to /dev/null; the median of {f.VersionRuns} runs each.");
        md.AppendLine($"- Per-spawn cost of the exec helper: every child first runs `gsupervisor-exec` (it sets `LISTEN_PID`, the parent-death signal and the user, then execs the command). " +
            $"The median of {f.SpawnRuns} `posix_spawn` + `waitpid` of `/bin/true` through it ({F(f.HelperSpawnMs, "0.00")} ms) less the median of {f.SpawnRuns} bare ones ({F(f.BareSpawnMs, "0.00")} ms), in ABBA halves.");
        md.AppendLine($"- First answer: from starting `gsupervisor --no-inject --listen 127.0.0.1:PORT -- StockKestrel` to the stock app's first HTTP answer, a client connecting as soon as the port is bound (the connection waits in the accept queue until the app serves); " +
            $"the same for `systemd-socket-activate --listen 127.0.0.1:PORT StockKestrel`, which execs the app on that first connection, and for gsupervisor without --no-inject, where the startup hook sets up the injected drain. " +
            $"Medians of {f.FirstAnswerRounds} rounds of the three in rotating order: {F(f.FirstAnswerMs, "0")} ms, {F(f.ActivatorFirstAnswerMs, "0")} ms and {F(f.InjectedFirstAnswerMs, "0")} ms. Most of each is the .NET app's own start.");
        md.AppendLine("- Idle RSS: VmRSS of the supervising process 3 s after its one stock-app child answers (gsupervisor; start_server's perl).");
        md.AppendLine($"- Installed size: `du -sk` of the tree `make deb` packages (binary, exec helper, Mono.Posix's native library, the .NET startup hook and integration, unit, man page, examples, README) and the .deb file; " +
            "for Server::Starter, Debian's Installed-Size of libserver-starter-perl and of perl-base, which it needs.");
        md.AppendLine("- RSS over 1000 reloads is `make soak`'s figure (bench/reload-soak.sh), for gsupervisor and start_server.");
        md.AppendLine();
    }

    private static string FootprintTable(FootprintFigures f)
    {
        var md = new StringBuilder();
        md.AppendLine("| figure | gsupervisor | beside it |");
        md.AppendLine("| --- | ---: | --- |");
        md.AppendLine($"| RSS, idle with one child | **{F(f.IdleRssMiB, "0.0")} MiB** | Server::Starter {F(f.StarterIdleRssMiB, "0.0")} MiB |");
        md.AppendLine($"| `--version` | **{F(f.VersionMs, "0.0")} ms** | `start_server --version` {F(f.StarterVersionMs, "0.0")} ms |");
        md.AppendLine($"| first answer of a child, beyond `systemd-socket-activate` | **{F(f.FirstAnswerExtraMs, "+0;-0")} ms** | {F(f.FirstAnswerMs, "0")} ms against {F(f.ActivatorFirstAnswerMs, "0")} ms |");
        md.AppendLine($"| the startup hook's cost to a stock app's first answer | **{F(f.HookCostMs, "+0;-0")} ms** | {F(f.InjectedFirstAnswerMs, "0")} ms injected against {F(f.FirstAnswerMs, "0")} ms with `--no-inject` |");
        md.AppendLine($"| per-spawn cost of the exec helper | **{F(f.HelperCostMs, "0.0")} ms** | a bare spawn of `/bin/true`: {F(f.BareSpawnMs, "0.0")} ms |");
        md.AppendLine($"| installed size | **{Size(f.InstalledKiB)}** ({Size(f.PackageKiB)} .deb) | libserver-starter-perl {Size(f.StarterInstalledKiB)} + perl-base {Size(f.PerlBaseInstalledKiB)} |");
        return md.ToString();
    }

    private static string Size(long kib) => kib < 1024 ? $"{kib} KiB" : $"{F(kib / 1024.0, "0.0")} MiB";

    private string MainTable(Workload workload)
    {
        var md = new StringBuilder();
        md.AppendLine("| strategy | requests | failed | req/s | p99 ms | max ms | p99 ms in reloads | max ms in reloads | longest silence ms | reload → old gone ms | supervisor RSS MiB | supervisor CPU s in the run |");
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
        md.AppendLine($"Measured by `make bench` on {_finished:yyyy-MM-dd} ({_machine.Cores} cores, loopback, {_options.Reloads} reloads per row under wrk with 50 connections; " +
            "full tables, definitions and commands in [bench/results/latest.md](bench/results/latest.md)):");
        md.AppendLine();
        md.AppendLine("| strategy | load | requests | failed | p99 ms in reloads | max ms in reloads | longest silence ms | reload → old gone ms | supervisor RSS MiB / CPU s in the run |");
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
        md.AppendLine($"HelloKestrel's throughput under gsupervisor ÷ run directly: {F(_throughput.Ratio, "0.00")} (median of {_throughput.Pairs.Count} alternating rounds, " +
            $"range {F(_throughput.Min, "0.00")}–{F(_throughput.Max, "0.00")}; the supervisor is not in the data path). " +
            $"gsupervisor spawns its first child {F(_startup.Median, "0")} ms after it is started and used {F(_idle.CpuSeconds, "0.00")} s of CPU over {F(_idle.Seconds, "0")} idle seconds, at {F(_idle.RssMiB, "0.0")} MiB RSS.");
        md.AppendLine();
        if (_footprint is { } footprint)
        {
            md.AppendLine("How light it is (the Native AOT binary as installed; definitions in the full report):");
            md.AppendLine();
            md.Append(FootprintTable(footprint));
            md.AppendLine();
        }
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

    /// <summary>
    /// Small multiples: one row per strategy, one column per workload. Each panel has the strategy's 2xx
    /// answers per second per 100 ms (line, left axis, the same scale in every panel), its failed requests
    /// per second (points, right axis, log scale) and its reload requests (dashed).
    /// </summary>
    private void Plot()
    {
        var dir = Path.Combine(paths.OutDirectory, "plot");
        Directory.CreateDirectory(dir);
        var strategies = runs.Select(r => r.Strategy).DistinctBy(s => s.Key).OrderBy(IndexOf).ToList();
        var scale = 1e6 / Timeline.BucketMicroseconds;

        var maxRate = workloads.ToDictionary(w => w, _ => 0.0);
        var maxFailures = 1.0;
        var files = new Dictionary<RunResult, (string Rate, string Failures)>();
        foreach (var run in runs)
        {
            var rate = new StringBuilder();
            var failures = new StringBuilder();
            var first = Timeline.BucketOf(run.LoadStart);
            var last = Timeline.BucketOf(run.SpanEnd) - 1;
            for (var b = first; b <= last; b++)
            {
                var bucket = run.Timeline.Buckets.GetValueOrDefault(b);
                var t = (b - first + 0.5) * Timeline.BucketMicroseconds / 1e6;
                var ok = (bucket?.Ok ?? 0) * scale;
                var failed = ((bucket?.Failed ?? 0) + (bucket?.Other ?? 0)) * scale;
                rate.AppendLine($"{F(t, "0.00")} {F(ok, "0")}");
                maxRate[run.Workload] = Math.Max(maxRate[run.Workload], ok);
                maxFailures = Math.Max(maxFailures, failed);
                if (failed > 0) failures.AppendLine($"{F(t, "0.00")} {F(failed, "0")}");
            }
            var name = Path.Combine(dir, $"{run.Workload.Key}-{run.Strategy.Key}");
            File.WriteAllText(name + ".rate", rate.ToString());
            File.WriteAllText(name + ".failed", failures.Length == 0 ? "NaN NaN\n" : failures.ToString());
            files[run] = (name + ".rate", name + ".failed");
        }

        string Quote(string s) => s.Replace("'", "''", StringComparison.Ordinal);
        string Plain(string s) => Quote(s.Replace("`", "", StringComparison.Ordinal));
        string Number(double value) => F(value, "0.####");

        const int Width = 1600, RowPixels = 250, TopPixels = 115, BottomPixels = 55;
        var height = RowPixels * strategies.Count + TopPixels + BottomPixels;
        var top = 1 - (double)TopPixels / height;
        var bottom = (double)BottomPixels / height;
        const double Left = 0.01;
        var rowHeight = (top - bottom) / strategies.Count;
        var columnWidth = (1 - Left - 0.02) / workloads.Count;
        var gp = new StringBuilder();
        var terminal = GnuplotHas("pngcairo") ? $"pngcairo size {Width},{height} font 'DejaVu Sans,11'" : $"png size {Width},{height}";
        gp.AppendLine($"set terminal {terminal}");
        gp.AppendLine($"set output '{Quote(PicturePath)}'");
        gp.AppendLine("set datafile missing 'NaN'");
        gp.AppendLine($"set multiplot title \"{_options.Reloads} reloads per strategy under wrk load (50 connections), {_machine.Cores} cores, {_finished:yyyy-MM-dd}; each strategy in turn, on the same schedule\\n" +
            "line: 2xx answers per second (left axis)    dots: failed requests per second (right axis, log scale)    dashed: reload requested    per 100 ms\" font ',13' noenhanced");
        gp.AppendLine("unset key");
        gp.AppendLine("set lmargin 0; set rmargin 0; set tmargin 0; set bmargin 0");
        gp.AppendLine($"set xrange [0:{Number(_options.WarmUp + _options.Reloads * _options.Interval + 1)}]");
        gp.AppendLine("set ytics nomirror; set format y '%.0s%c'");
        gp.AppendLine($"set logscale y2; set y2range [1:{F(Math.Pow(10, Math.Ceiling(Math.Log10(maxFailures * 1.5))), "0")}]; set y2tics nomirror; set format y2 '10^{{%T}}'");
        gp.AppendLine("set grid xtics ytics lc rgb '#eeeeee'");
        for (var column = 0; column < workloads.Count; column++)
        {
            var workload = workloads[column];
            var x = Left + column * columnWidth;
            gp.AppendLine($"set label 100 '{Plain(Capitalize(workload.Label))}' at screen {Number(x + columnWidth * 0.5)}, screen {Number(1 - 90.0 / height)} center font ',13' noenhanced");
            gp.AppendLine($"set yrange [0:{F(maxRate[workload] * 1.05, "0")}]");
            for (var row = 0; row < strategies.Count; row++)
            {
                var strategy = strategies[row];
                var run = runs.FirstOrDefault(r => r.Workload == workload && r.Strategy.Key == strategy.Key);
                var y = top - (row + 1) * rowHeight;
                var color = Colors[IndexOf(strategy) % Colors.Length];
                gp.AppendLine($"set origin {Number(x + 0.05)},{Number(y + rowHeight * 0.06)}; set size {Number(columnWidth - 0.1)},{Number(rowHeight * 0.78)}");
                gp.AppendLine(row == strategies.Count - 1
                    ? "set format x '%g'; set xlabel 'seconds since the load started (dashed: reload requested)'"
                    : "set format x ''; unset xlabel");
                gp.AppendLine("unset arrow");
                var n = 1;
                foreach (var reload in run?.Reloads ?? [])
                {
                    var at = Number(run!.Seconds(reload.RequestedAt));
                    gp.AppendLine($"set arrow {n++} from {at}, graph 0 to {at}, graph 1 nohead lc rgb '#999999' dt 2 back");
                }
                var title = run is null ? strategy.Label : $"{strategy.Label}: {N(run.Stats.Failed)} failed";
                gp.AppendLine($"set label 1 '{Quote(title)}' at graph 0, graph 1.08 left front font ',11' tc rgb '{color}' noenhanced");
                if (column == 0) gp.AppendLine($"set ylabel '2xx / s'; set y2label ''");
                else gp.AppendLine("unset ylabel; set y2label 'failed / s'");
                if (run is null)
                {
                    gp.AppendLine("plot NaN notitle");
                    continue;
                }
                gp.AppendLine($"plot '{Quote(files[run].Rate)}' using 1:2 axes x1y1 with lines lw 1.2 lc rgb '{color}' notitle, \\");
                gp.AppendLine($"     '{Quote(files[run].Failures)}' using 1:2 axes x1y2 with points pt 7 ps 0.9 lc rgb '#222222' notitle");
                gp.AppendLine("unset label 1");
            }
            gp.AppendLine("unset label 100");
        }
        gp.AppendLine("unset multiplot");
        var script = Path.Combine(dir, "latest.gp");
        File.WriteAllText(script, gp.ToString());
        var (status, output) = RunGnuplot(script);
        if (status != 0) throw new BenchException($"gnuplot failed (status {status}) on {script}:\n{output}");
    }

    private static int IndexOf(Strategy strategy) => Array.IndexOf(StrategyOrder, strategy.Key) is var i and >= 0 ? i : StrategyOrder.Length;

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
