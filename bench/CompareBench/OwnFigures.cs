// Overview
// --------
// gsupervisor's own figures, apart from reloads:
//  - start-up: from starting gsupervisor to its "generation 1 (pid P) started" line (the child spawned),
//    the median of several starts, with `sleep` as the child;
//  - throughput: HelloKestrel run directly (Kestrel binds the port) against HelloKestrel under
//    gsupervisor, both warmed up and then measured in alternating plain-wrk rounds; the supervisor is not
//    in the data path, so the ratio should be about 1;
//  - idle: gsupervisor's CPU time over a quiet minute with one HelloKestrel child, and its RSS.

using System.Diagnostics;
using System.Globalization;

namespace CompareBench;

internal sealed record StartupFigures(IReadOnlyList<double> Samples)
{
    public double Median => Samples.Order().ElementAt(Samples.Count / 2);
}

internal sealed record ThroughputFigures(IReadOnlyList<(double Direct, double Supervised)> Pairs, TimeSpan Each)
{
    /// <summary>The median of the rounds' supervised / direct ratios (robust to a burst of other work in one round).</summary>
    public double Ratio => Median(Pairs.Select(p => p.Supervised / p.Direct));

    public double Min => Pairs.Min(p => p.Supervised / p.Direct);
    public double Max => Pairs.Max(p => p.Supervised / p.Direct);
    public double Direct => Pairs.Sum(p => p.Direct) / Pairs.Count;
    public double Supervised => Pairs.Sum(p => p.Supervised) / Pairs.Count;

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}

internal sealed record IdleFigures(double Seconds, double CpuSeconds, double RssMiB);

internal static class OwnFigures
{
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(45);

    public static async Task<StartupFigures> StartupAsync(Paths paths, int count, CancellationToken token)
    {
        var samples = new List<double>();
        for (var i = 1; i <= count; i++)
        {
            var supervisor = Child.Start("gsupervisor", paths.GSupervisor,
                [.. paths.Control($"startup-{i}"), "--listen", "127.0.0.1:0", "--ready", "delay:1h", "--stop-timeout", "5s", "--", "sleep", "600"], paths.Log($"startup-{i}"));
            var started = await supervisor.WaitForLineAsync(@"generation 1 \(pid \d+\) started", 0, StepTimeout, token);
            samples.Add(ReloadTiming.Milliseconds(started.At - supervisor.StartedAt));
            await supervisor.StopAsync(StopGrace);
        }
        return new StartupFigures(samples);
    }

    public static async Task<ThroughputFigures> DirectVsSupervisedAsync(Paths paths, int rounds, TimeSpan each, CancellationToken token)
    {
        var directPort = Net.FreePort();
        var direct = Child.Start("HelloKestrel (direct)", paths.HelloKestrel, ["--urls", $"http://127.0.0.1:{directPort}"], paths.Log("throughput-direct"));
        var supervisor = Child.Start("gsupervisor", paths.GSupervisor, [.. paths.Control("throughput"), "--listen", "127.0.0.1:0", "--", paths.HelloKestrel], paths.Log("throughput-gsupervisor"));
        var supervisedPort = int.Parse((await supervisor.WaitForLineAsync(@"listening on 127\.0\.0\.1:(\d+)", 0, StepTimeout, token)).Match.Groups[1].Value,
            CultureInfo.InvariantCulture);
        await supervisor.WaitForLineAsync(@"generation 1 \(pid \d+\) is ready", 0, StepTimeout, token);
        await Net.PollUntilAnswersAsync(directPort, direct.Pid, direct, token);

        var warmUp = TimeSpan.FromSeconds(5); // JIT warm-up of both, not measured
        await Wrk.RunPlainAsync(directPort, warmUp, paths.Log("throughput-warmup-direct"), token);
        await Wrk.RunPlainAsync(supervisedPort, warmUp, paths.Log("throughput-warmup-supervised"), token);
        var pairs = new List<(double, double)>();
        for (var round = 1; round <= rounds; round++)
        {
            double d, s;
            if (round % 2 == 1)
            {
                d = (await Wrk.RunPlainAsync(directPort, each, paths.Log($"throughput-{round}-direct"), token)).RequestsPerSecond;
                s = (await Wrk.RunPlainAsync(supervisedPort, each, paths.Log($"throughput-{round}-supervised"), token)).RequestsPerSecond;
            }
            else
            {
                s = (await Wrk.RunPlainAsync(supervisedPort, each, paths.Log($"throughput-{round}-supervised"), token)).RequestsPerSecond;
                d = (await Wrk.RunPlainAsync(directPort, each, paths.Log($"throughput-{round}-direct"), token)).RequestsPerSecond;
            }
            pairs.Add((d, s));
        }
        await Task.WhenAll(direct.StopAsync(StopGrace), supervisor.StopAsync(StopGrace));
        return new ThroughputFigures(pairs, each);
    }

    public static async Task<IdleFigures> IdleAsync(Paths paths, TimeSpan length, CancellationToken token)
    {
        var supervisor = Child.Start("gsupervisor", paths.GSupervisor, [.. paths.Control("idle"), "--listen", "127.0.0.1:0", "--", paths.HelloKestrel], paths.Log("idle"));
        await supervisor.WaitForLineAsync(@"generation 1 \(pid \d+\) is ready", 0, StepTimeout, token);
        await Task.Delay(TimeSpan.FromSeconds(2), token); // let start-up settle; part of the measurement's definition
        var before = Libc.CpuSeconds(supervisor.Pid);
        var clock = Stopwatch.StartNew();
        await Task.Delay(length, token); // the quiet period being measured
        var cpu = Libc.CpuSeconds(supervisor.Pid) - before;
        var seconds = clock.Elapsed.TotalSeconds;
        var (rss, _) = Libc.RssMiB(supervisor.Pid);
        await supervisor.StopAsync(StopGrace);
        return new IdleFigures(seconds, cpu, rss);
    }
}
