// Reload benchmark (not a test): runs HelloKestrel (UseGSupervisor, drain on), SystemdKestrel injected (the
// unmodified app with gsupervisor's startup hook: drain on) and SystemdKestrel with --no-inject (stock Kestrel via
// LISTEN_FDS, no drain) under gsupervisor, with a keep-alive load and a new-connection load, reloads each
// RELOADS times and prints requests, failures and latencies side by side.
//
//   dotnet run -c Release --project bench/ReloadBench -- [RELOADS] [CONFIG]      (make bench-reload)

using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using GSupervisor.Testing;

var reloads = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 10;
var config = args.Length > 1 ? args[1] : "Release";
var root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../.."));
string Bin(string project, string name) => Path.Combine(root, project, "bin", config, "net10.0", name);
// The native binary (make bench-reload sets GSUPERVISOR to the published one), else the tree of `make deb`.
var supervisorPath = Environment.GetEnvironmentVariable("GSUPERVISOR") is { Length: > 0 } given ? given : Path.Combine(root, "out/deb/root/usr/bin/gsupervisor");

var apps = new (string Label, string[] Arguments)[]
{
    ("HelloKestrel, drain on (--ready notify)", ["--", Bin("examples/HelloKestrel", "HelloKestrel")]),
    ("stock Kestrel, UseSystemd, injected (--ready notify)", ["--", Bin("examples/SystemdKestrel", "SystemdKestrel")]),
    ("stock Kestrel, UseSystemd, --no-inject (--ready delay:1500ms)", ["--no-inject", "--ready", "delay:1500ms", "--", Bin("examples/SystemdKestrel", "SystemdKestrel")]),
};
var loads = new (string Label, Func<int, LoadBase> Start)[]
{
    ("keep-alive, 50 connections", port => new KeepAliveLoad(port, 50)),
    ("new connection per request, 8 workers", port => new NewConnectionLoad(port, 8)),
};

Console.WriteLine($"gsupervisor reload benchmark: {reloads} SIGUSR2 reloads per run, 1 s apart after each completes; {Environment.ProcessorCount} cores");
Console.WriteLine();
Console.WriteLine("| child | load | requests | failed | req/s | p50 ms | p99 ms | max ms | p99 in reload windows ms | reload to old gone ms (median) |");
Console.WriteLine("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
foreach (var (appLabel, appArgs) in apps)
foreach (var (loadLabel, startLoad) in loads)
{
    using var supervisor = new Supervisor(supervisorPath, ["--listen", "127.0.0.1:0", .. appArgs]);
    var port = int.Parse(supervisor.WaitFor(@"listening on 127\.0\.0\.1:(\d+)").Groups[1].Value, CultureInfo.InvariantCulture);
    supervisor.WaitFor(@"generation 1 \(pid \d+\) is ready");
    using var load = startLoad(port);
    Thread.Sleep(2000); // warm-up period of the benchmark
    var windows = new List<(double From, double To)>();
    var reloadTimes = new List<double>();
    for (var generation = 2; generation <= reloads + 1; generation++)
    {
        var from = load.Elapsed;
        var signalled = Stopwatch.StartNew();
        supervisor.Reload();
        supervisor.WaitFor($@"reload succeeded: generation {generation} ");
        supervisor.WaitFor($@"generation {generation - 1} \(pid \d+\) exited");
        reloadTimes.Add(signalled.Elapsed.TotalMilliseconds);
        windows.Add((from, load.Elapsed));
        Thread.Sleep(1000); // fixed interval between reloads
    }
    var seconds = load.Elapsed;
    load.Stop();
    var all = load.Latencies.Select(l => l.Milliseconds).Order().ToArray();
    var inWindows = load.Latencies.Where(l => windows.Any(w => l.At >= w.From && l.At <= w.To)).Select(l => l.Milliseconds).Order().ToArray();
    Console.WriteLine($"| {appLabel} | {loadLabel} | {load.Successes + load.Failures.Count} | {load.Failures.Count} | {load.Successes / seconds:F0} | " +
        $"{Percentile(all, 50):F2} | {Percentile(all, 99):F2} | {all.LastOrDefault():F1} | {Percentile(inWindows, 99):F2} | {reloadTimes.Order().ElementAt(reloadTimes.Count / 2):F0} |");
    foreach (var reason in load.Failures.GroupBy(f => f).OrderByDescending(g => g.Count()))
        Console.Error.WriteLine($"    {appLabel} / {loadLabel}: {reason.Count()} x {reason.Key}");
}

static double Percentile(double[] sorted, double p) =>
    sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(p / 100 * sorted.Length) - 1)];

/// <summary>A gsupervisor process whose stderr is watched for lines.</summary>
internal sealed class Supervisor : IDisposable
{
    private readonly Process _process;
    private readonly List<string> _lines = [];

    public Supervisor(string path, string[] arguments)
    {
        var info = new ProcessStartInfo(path) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        _process = Process.Start(info)!;
        _process.ErrorDataReceived += (_, e) => { if (e.Data is { } line) lock (_lines) { _lines.Add(line); Monitor.PulseAll(_lines); } };
        _process.OutputDataReceived += (_, _) => { };
        _process.BeginErrorReadLine();
        _process.BeginOutputReadLine();
    }

    public Match WaitFor(string pattern)
    {
        var regex = new Regex(pattern);
        var deadline = Stopwatch.StartNew();
        lock (_lines)
        {
            while (true)
            {
                foreach (var line in _lines)
                    if (regex.Match(line) is { Success: true } m) return m;
                if (deadline.Elapsed > TimeSpan.FromSeconds(60))
                    throw new TimeoutException($"no line matching /{pattern}/:\n{string.Join("\n", _lines)}");
                Monitor.Wait(_lines, TimeSpan.FromMilliseconds(200));
            }
        }
    }

    public void Reload() => Process.Start("kill", ["-USR2", _process.Id.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            Process.Start("kill", ["-TERM", _process.Id.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();
            if (!_process.WaitForExit(TimeSpan.FromSeconds(30))) _process.Kill(entireProcessTree: true);
        }
        _process.Dispose();
    }
}
