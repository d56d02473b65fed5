// make bench: gsupervisor against what people do today, measured in one run, on the same app and the same
// load. For each workload (wrk keep-alive and wrk Connection: close, 50 connections) and each strategy
// (Strategies.cs) it starts the server, runs wrk with timeline.lua, requests RELOADS reloads on a fixed
// schedule and records when each was requested, when the new process served and when the old one was
// gone. Before that, how light gsupervisor is (Footprint.cs: --version, the exec helper's cost per spawn,
// a child's first answer against systemd-socket-activate, idle RSS against Server::Starter, installed
// size) and its own figures: HelloKestrel's throughput under gsupervisor against the same app run
// directly, start-up time to the first child; after the runs, idle CPU and RSS over 60 s. gsupervisor is
// the Native AOT binary as `make deb` installs it (out/deb/root/usr). Report.cs writes
// bench/results/latest.md and latest.png (gnuplot) and the README's table. Raw logs, wrk output and the
// timelines stay in out/bench/.
//
//   dotnet bench/CompareBench/bin/Release/net10.0/CompareBench.dll [--reloads 10] [--interval 4]
//       [--warm-up 3] [--idle 60] [--throughput-seconds 2] [--only KEY,KEY] [--out out/bench] [--results bench/results]
//       [--no-readme] [--report-only]
//
// A partial run (--only, fewer than 10 reloads, less than 60 s idle) writes to OUT/results and leaves
// bench/results and the README alone, unless --results says otherwise.
//
// Everything measured is also kept in out/bench/findings.json (with the timelines beside it);
// --report-only writes the report again from there without measuring.

using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using CompareBench;

Options options;
try
{
    options = Options.Parse(args);
}
catch (Exception e) when (e is ArgumentException or FormatException)
{
    Console.Error.WriteLine($"bench: {e.Message}");
    return 64;
}
var root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../.."));
string Bin(string project, string name) => Path.Combine(root, project, "bin", options.Config, "net10.0", name);
// gsupervisor as users install it: the tree of `make deb` (Native AOT).
var installedTree = Path.Combine(root, "out/deb/root/usr");
var paths = new Paths(root, Path.Combine(installedTree, "bin/gsupervisor"), Bin("examples/HelloKestrel", "HelloKestrel"),
    Bin("bench/StockKestrel", "StockKestrel"), Path.Combine(AppContext.BaseDirectory, "timeline.lua"),
    Path.GetFullPath(options.OutDirectory, root), Path.GetFullPath(options.ResultsDirectory, root), installedTree,
    Directory.Exists(Path.Combine(root, "out")) ? Directory.GetFiles(Path.Combine(root, "out"), "gsupervisor_*.deb").FirstOrDefault() ?? "" : "");

using var cancel = new CancellationTokenSource();
using var onInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
using var onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
using var onHup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, Stop);
void Stop(PosixSignalContext context)
{
    context.Cancel = true;
    Console.Error.WriteLine($"bench: {context.Signal} received; stopping everything it started");
    cancel.Cancel();
}

var token = cancel.Token;
var clock = Stopwatch.StartNew();
void Say(string line) => Console.WriteLine($"[{clock.Elapsed:mm\\:ss}] {line}");

try
{
    var workloads = new[]
    {
        new Workload("keepalive", "keep-alive, 50 connections", "keep-alive", 50, ConnectionClose: false),
        new Workload("close", "`Connection: close`, 50 connections", "`Connection: close`", 50, ConnectionClose: true),
    };
    Strategy[] strategies =
    [
        new GSupervisorStrategy(paths, GSupervisorChild.HelloKestrel),
        new GSupervisorStrategy(paths, GSupervisorChild.StockInjected),
        new GSupervisorStrategy(paths, GSupervisorChild.StockPlain),
        new ServerStarterStrategy(paths),
        new ScriptedStrategy(paths, reusePort: false),
        new ScriptedStrategy(paths, reusePort: true),
    ];
    var findingsPath = Path.Combine(paths.OutDirectory, "findings.json");
    Findings findings;
    if (options.ReportOnly)
    {
        if (!File.Exists(findingsPath)) throw new BenchException($"{findingsPath} is missing: run the bench first");
        findings = Findings.Load(findingsPath);
        Say($"report from {Path.GetRelativePath(root, findingsPath)} ({findings.Finished:yyyy-MM-dd HH:mm} UTC)");
    }
    else
    {
        findings = await MeasureAsync();
        findings.Save(findingsPath);
    }

    var runs = findings.Runs.Select(r => new RunResult(strategies.Single(s => s.Key == r.Strategy), workloads.Single(w => w.Key == r.Workload),
        Timeline.Read(Runner.TimelinePath(paths, r.Workload, r.Strategy)), r.Wrk, r.LoadStart, r.SpanStart, r.SpanEnd, r.Reloads, r.Supervisor, r.LoadAverage)).ToList();
    var report = new Report(findings with { Options = findings.Options with { UpdateReadme = options.UpdateReadme } }, paths, workloads, runs);
    report.Write();
    Say($"wrote {Path.GetRelativePath(root, report.MarkdownPath)} and {Path.GetRelativePath(root, report.PicturePath)}" +
        (report.ReadmeUpdated ? "; README.md's table updated" : ""));
    return 0;

    async Task<Findings> MeasureAsync()
    {
        foreach (var file in new[] { paths.GSupervisor, paths.Package, paths.HelloKestrel, paths.StockKestrel, paths.Script })
            if (!File.Exists(file)) throw new BenchException($"{(file.Length == 0 ? "out/gsupervisor_*.deb" : file)} is missing: run make build and make deb first (make bench does)");
        if (options.Only?.Except(strategies.Select(s => s.Key)).FirstOrDefault() is { } unknown)
            throw new BenchException($"--only: no strategy '{unknown}' (there are {string.Join(", ", strategies.Select(s => s.Key))})");
        Libc.CheckStopwatchIsMonotonicClock();
        Directory.CreateDirectory(paths.OutDirectory);
        foreach (var previous in new[] { "logs", "timelines", "plot", "control" }.Select(d => Path.Combine(paths.OutDirectory, d)).Where(Directory.Exists))
            Directory.Delete(previous, recursive: true);
        File.Delete(findingsPath);
        var machine = Machine.Describe();
        Say($"gsupervisor bench: {options.Reloads} reloads every {options.Interval} s per strategy and workload; {machine.Cores} cores, load average {machine.LoadAverage}");

        var footprint = await Footprint.MeasureAsync(paths, Say, token);
        var startup = await OwnFigures.StartupAsync(paths, 5, token);
        Say($"gsupervisor start-up to first child spawn: {startup.Median:F0} ms (median of {startup.Samples.Count})");
        var throughput = await OwnFigures.DirectVsSupervisedAsync(paths, rounds: 12, TimeSpan.FromSeconds(options.ThroughputSeconds), token);
        Say($"HelloKestrel under gsupervisor / direct: {throughput.Ratio:F3} (median of {throughput.Pairs.Count} rounds; range {throughput.Min:F2}-{throughput.Max:F2})");

        var saved = new List<SavedRun>();
        foreach (var workload in workloads)
        foreach (var strategy in strategies.Where(s => options.Only is null || options.Only.Contains(s.Key)))
        {
            var run = await Runner.RunAsync(strategy, workload, options, paths, token);
            saved.Add(new SavedRun(strategy.Key, workload.Key, run.Wrk, run.LoadStart, run.SpanStart, run.SpanEnd, run.Reloads, run.Supervisor, run.LoadAverage));
            Say($"{workload.Key,-9} {strategy.Label,-44} {run.Stats.Requests,9:N0} requests, {run.Stats.Failed,7:N0} failed, " +
                $"p99 {run.Stats.P99:F1} ms ({run.Stats.WindowP99:F1} in reloads), old gone after {run.Stats.OldGoneMedianMs:F0} ms");
        }

        var idle = await OwnFigures.IdleAsync(paths, TimeSpan.FromSeconds(options.IdleSeconds), token);
        Say($"gsupervisor idle: {idle.CpuSeconds:F2} s CPU over {idle.Seconds:F0} s, RSS {idle.RssMiB:F1} MiB");
        return new Findings(options, machine, DateTime.UtcNow, Machine.CurrentLoadAverage(), clock.Elapsed.TotalSeconds, startup, throughput, idle, footprint, saved);
    }
}
catch (OperationCanceledException) when (token.IsCancellationRequested)
{
    Console.Error.WriteLine("bench: interrupted");
    return 130;
}
catch (BenchException e)
{
    Console.Error.WriteLine($"bench: {e.Message}");
    return 1;
}
finally
{
    await Child.StopAllAsync(TimeSpan.FromSeconds(45));
}

/// <summary>Where the binaries are, and where logs go.</summary>
internal sealed record Paths(string Root, string GSupervisor, string HelloKestrel, string StockKestrel, string Script, string OutDirectory, string ResultsDirectory,
    string InstalledTree, string Package)
{
    public string Log(string name) => Path.Combine(OutDirectory, "logs", name + ".log");

    /// <summary>
    /// gsupervisor's arguments to start with: its own control socket, so it never meets another gsupervisor
    /// on this machine at the default path.
    /// </summary>
    public string[] Control(string name)
    {
        Directory.CreateDirectory(Path.Combine(OutDirectory, "control"));
        return ["--control", Path.Combine(OutDirectory, "control", name + ".sock")];
    }
}

/// <summary>Everything a run measured, kept in out/bench/findings.json so that --report-only can write the report again.</summary>
internal sealed record Findings(Options Options, Machine Machine, DateTime Finished, string EndLoadAverage, double ElapsedSeconds,
    StartupFigures Startup, ThroughputFigures Throughput, IdleFigures Idle, FootprintFigures? Footprint, IReadOnlyList<SavedRun> Runs)
{
    private static readonly JsonSerializerOptions Json = new() { IncludeFields = true, WriteIndented = true };

    public void Save(string path) => File.WriteAllText(path, JsonSerializer.Serialize(this, Json));

    public static Findings Load(string path) =>
        JsonSerializer.Deserialize<Findings>(File.ReadAllText(path), Json) ?? throw new BenchException($"{path} is empty");
}

/// <summary>One run's measurements; its timeline stays in out/bench/timelines/.</summary>
internal sealed record SavedRun(string Strategy, string Workload, WrkSummary Wrk, long LoadStart, long SpanStart, long SpanEnd,
    IReadOnlyList<ReloadTiming> Reloads, SupervisorFigures? Supervisor, string LoadAverage);

internal sealed record Options(int Reloads, double Interval, double WarmUp, int IdleSeconds, double ThroughputSeconds, string Config, string OutDirectory,
    string ResultsDirectory, HashSet<string>? Only, bool UpdateReadme, bool ReportOnly)
{
    public static Options Parse(string[] args)
    {
        var o = new Options(10, 4, 3, 60, 2, "Release", "out/bench", "bench/results", null, true, false);
        for (var i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            double Number() => double.Parse(Value(), CultureInfo.InvariantCulture);
            o = args[i] switch
            {
                "--reloads" => o with { Reloads = (int)Number() },
                "--interval" => o with { Interval = Number() },
                "--warm-up" => o with { WarmUp = Number() },
                "--idle" => o with { IdleSeconds = (int)Number() },
                "--throughput-seconds" => o with { ThroughputSeconds = Number() },
                "--config" => o with { Config = Value() },
                "--out" => o with { OutDirectory = Value() },
                "--results" => o with { ResultsDirectory = Value() },
                "--only" => o with { Only = [.. Value().Split(',')] },
                "--no-readme" => o with { UpdateReadme = false },
                "--report-only" => o with { ReportOnly = true },
                _ => throw new ArgumentException($"unknown option {args[i]}"),
            };
        }
        if (o.Reloads < 1 || o.Interval <= 0 || o.WarmUp < 0 || o.IdleSeconds < 1 || o.ThroughputSeconds < 1)
            throw new ArgumentException("--reloads, --idle and --throughput-seconds must be at least 1, --interval above 0");
        // Only a full run (every strategy, at least the default reloads and idle time) may stand for the project:
        // a quick look writes its report under the out directory and leaves bench/results and the README alone.
        var full = o.Only is null && o.Reloads >= 10 && o.IdleSeconds >= 60;
        if (!full && !o.ReportOnly && !args.Contains("--results"))
            o = o with { ResultsDirectory = Path.Combine(o.OutDirectory, "results"), UpdateReadme = false };
        return o;
    }
}

/// <summary>The machine the bench ran on.</summary>
internal sealed record Machine(int Cores, string Cpu, double MemoryGiB, string Kernel, string Os, string Runtime, string Sdk, string LoadAverage, string Wrk, string ServerStarter, string Gnuplot)
{
    public static Machine Describe()
    {
        string Run(string file, params string[] arguments)
        {
            try
            {
                var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                foreach (var a in arguments) info.ArgumentList.Add(a);
                using var p = Process.Start(info)!;
                var text = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
                p.WaitForExit();
                return text.Trim();
            }
            catch (System.ComponentModel.Win32Exception)
            {
                return "?";
            }
        }
        var cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "?";
        var os = File.Exists("/etc/os-release")
            ? File.ReadLines("/etc/os-release").FirstOrDefault(l => l.StartsWith("PRETTY_NAME=", StringComparison.Ordinal))?.Split('=', 2)[1].Trim('"') ?? "?"
            : "?";
        var load = string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3));
        var wrk = Run("wrk", "-v").Split('\n')[0].Split(" [")[0];
        var starter = Run("start_server", "--version").Split('\n')[0];
        var memory = long.Parse(File.ReadLines("/proc/meminfo").First().Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0 / 1024.0;
        return new Machine(Environment.ProcessorCount, cpu, memory, File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), os, RuntimeInformation.FrameworkDescription,
            Run("dotnet", "--version"), load, wrk, starter, Run("gnuplot", "--version"));
    }

    public static string CurrentLoadAverage() => string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3));
}
