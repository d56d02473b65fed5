// Overview
// --------
// One measured run: a strategy under a workload. The server starts; wrk starts (time 0); after the
// warm-up the reloads are requested on a fixed schedule, reload k at warm-up + (k-1) * interval (or as
// soon as reload k-1 is complete, if that is later), and the run ends at warm-up + reloads * interval.
// RunStats turns the merged wrk timeline into the table's figures; everything counts from the end of
// the warm-up to the end of the run.

using System.Diagnostics;

namespace CompareBench;

internal sealed record RunResult(Strategy Strategy, Workload Workload, Timeline Timeline, WrkSummary Wrk, long LoadStart,
    long SpanStart, long SpanEnd, IReadOnlyList<ReloadTiming> Reloads, SupervisorFigures? Supervisor, string LoadAverage)
{
    public RunStats Stats { get; } = new(Timeline, SpanStart, SpanEnd, Reloads);

    /// <summary>Seconds since the load started, for the picture.</summary>
    public double Seconds(long timestamp) => (timestamp - LoadStart) / (double)Stopwatch.Frequency;
}

/// <summary>The supervising process's RSS at the end of a run (and its peak), and the CPU time it used during the run.</summary>
internal sealed record SupervisorFigures(double RssMiB, double PeakRssMiB, double CpuSeconds)
{
    public static SupervisorFigures Of(Child process, double cpuSecondsBefore)
    {
        var (now, peak) = Libc.RssMiB(process.Pid);
        return new SupervisorFigures(now, peak, Libc.CpuSeconds(process.Pid) - cpuSecondsBefore);
    }
}

internal static class Runner
{
    public static async Task<RunResult> RunAsync(Strategy strategy, Workload workload, Options options, Paths paths, CancellationToken token)
    {
        strategy.RunName = $"{workload.Key}-{strategy.Key}";
        await strategy.StartAsync(token);
        var loadAverage = Machine.CurrentLoadAverage();
        var supervisorCpuBefore = strategy.Supervisor is { } before ? Libc.CpuSeconds(before.Pid) : 0;
        var timelinePath = TimelinePath(paths, workload.Key, strategy.Key);
        Directory.CreateDirectory(Path.GetDirectoryName(timelinePath)!);
        var wrk = Child.Start("wrk", "wrk", workload.WrkArguments(paths.Script, strategy.Port), paths.Log(strategy.RunName + "-wrk"),
            new Dictionary<string, string> { ["WRK_TIMELINE"] = timelinePath });
        var loadStart = wrk.StartedAt;
        long At(double seconds) => loadStart + (long)(seconds * Stopwatch.Frequency);

        // The warm-up, the schedule and the end are fixed parts of the workload, hence these waits.
        await DelayUntilAsync(At(options.WarmUp), token);
        var reloads = new List<ReloadTiming>();
        for (var k = 1; k <= options.Reloads; k++)
        {
            await DelayUntilAsync(At(options.WarmUp + (k - 1) * options.Interval), token);
            if (wrk.HasExited) throw new BenchException($"wrk ended early:\n{wrk.Tail()}");
            reloads.Add(await strategy.ReloadAsync(k, token));
        }
        // The run ends on schedule, or 1 s after the last reload completed if that is later (the bucket wrk
        // is in when it stops is not written, so the last reload must not reach it).
        var spanEnd = Math.Max(At(options.WarmUp + options.Reloads * options.Interval),
            reloads[^1].CompleteAt + Stopwatch.Frequency);
        await DelayUntilAsync(spanEnd, token);
        var supervisor = strategy.Supervisor is { } s ? SupervisorFigures.Of(s, supervisorCpuBefore) : null;
        var summary = await Wrk.StopTimelineAsync(wrk, token);
        await strategy.StopAsync();
        return new RunResult(strategy, workload, Timeline.Read(timelinePath), summary, loadStart, At(options.WarmUp), spanEnd, reloads, supervisor, loadAverage);
    }

    public static string TimelinePath(Paths paths, string workload, string strategy) =>
        Path.Combine(paths.OutDirectory, "timelines", $"{workload}-{strategy}");

    private static async Task DelayUntilAsync(long timestamp, CancellationToken token)
    {
        var left = timestamp - Stopwatch.GetTimestamp();
        if (left > 0) await Task.Delay(TimeSpan.FromSeconds(left / (double)Stopwatch.Frequency), token);
    }
}

/// <summary>The figures of one run, from its timeline.</summary>
internal sealed class RunStats
{
    public RunStats(Timeline timeline, long spanStart, long spanEnd, IReadOnlyList<ReloadTiming> reloads)
    {
        var first = Timeline.BucketOf(spanStart);
        var last = Timeline.BucketOf(spanEnd) - 1;
        Seconds = (last - first + 1) * Timeline.BucketMicroseconds / 1e6;
        var span = timeline.Range(first, last).ToList();
        Ok = span.Sum(b => b.Ok);
        Failed = span.Sum(b => b.Other + b.Failed);
        Unanswered = span.Sum(b => b.Failed);
        Non2xx = span.Sum(b => b.Other);
        Requests = Ok + Failed;
        P99 = Timeline.Percentile(span, 99);
        Max = Timeline.MaxMilliseconds(span);

        var windowBuckets = new SortedSet<long>();
        foreach (var reload in reloads)
        {
            var (from, to) = (Timeline.BucketOf(reload.RequestedAt), Timeline.BucketOf(reload.CompleteAt));
            for (var b = from; b <= to; b++) windowBuckets.Add(b);
            long run = 0;
            for (var b = from; b <= to; b++)
            {
                run = timeline.Buckets.TryGetValue(b, out var bucket) && bucket.Ok > 0 ? 0 : run + 1;
                LongestSilenceMs = Math.Max(LongestSilenceMs, run * Timeline.BucketMicroseconds / 1000.0);
            }
        }
        var inWindows = windowBuckets.Where(timeline.Buckets.ContainsKey).Select(b => timeline.Buckets[b]).ToList();
        WindowP99 = Timeline.Percentile(inWindows, 99);
        WindowMax = Timeline.MaxMilliseconds(inWindows);
        FailedInWindows = inWindows.Sum(b => b.Other + b.Failed);
        OldGoneMedianMs = Median(reloads.Select(r => r.OldGoneMs));
        NewServingMedianMs = Median(reloads.Select(r => r.NewServingMs));
    }

    public double Seconds { get; }
    public long Requests { get; }
    public long Ok { get; }
    public long Failed { get; }
    public long Unanswered { get; }
    public long Non2xx { get; }
    public double RequestsPerSecond => Ok / Seconds;
    public double P99 { get; }
    public double Max { get; }
    public double WindowP99 { get; }
    public double WindowMax { get; }
    public long FailedInWindows { get; }
    /// <summary>The longest stretch inside a reload window with no 2xx answer at all, in whole 100 ms buckets.</summary>
    public double LongestSilenceMs { get; }
    public double OldGoneMedianMs { get; }
    public double NewServingMedianMs { get; }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0) return double.NaN;
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
