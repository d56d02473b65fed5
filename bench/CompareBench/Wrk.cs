// Overview
// --------
// The load: wrk, run two ways.
//  - Timeline runs (the strategy comparison): `wrk -t 50 -c 50` with timeline.lua, one connection per wrk
//    thread, until the bench sends SIGINT. The script writes 100 ms buckets of answers, failures and a
//    latency histogram per thread; Timeline merges them. wrk's own totals come along as a cross-check.
//  - Plain runs (direct vs supervised throughput): `wrk -t 2 -c 50 -d N`, no script, Requests/sec read
//    from its summary.

using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace CompareBench;

/// <summary>The load's settings, the same for every strategy.</summary>
internal sealed record Workload(string Key, string Label, string Short, int Connections, bool ConnectionClose)
{
    public IEnumerable<string> WrkArguments(string script, int port) =>
    [
        "-t", Connections.ToString(CultureInfo.InvariantCulture), "-c", Connections.ToString(CultureInfo.InvariantCulture),
        "-d", "900s", "--timeout", "10s", "-s", script,
        .. ConnectionClose ? new[] { "-H", "Connection: close" } : [],
        $"http://127.0.0.1:{port}/",
    ];
}

/// <summary>wrk's own closing summary.</summary>
internal sealed record WrkSummary(long Requests, long Connect, long Read, long Write, long Timeout, long Status, double RequestsPerSecond)
{
    public long SocketErrors => Connect + Read + Write + Timeout;

    public static WrkSummary Parse(string output)
    {
        long Number(string pattern, int group = 1) =>
            Regex.Match(output, pattern) is { Success: true } m ? long.Parse(m.Groups[group].Value, CultureInfo.InvariantCulture) : 0;
        var errors = Regex.Match(output, @"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)");
        long Error(int i) => errors.Success ? long.Parse(errors.Groups[i].Value, CultureInfo.InvariantCulture) : 0;
        var rate = Regex.Match(output, @"Requests/sec:\s+([\d.]+)");
        if (!rate.Success) throw new BenchException("wrk printed no summary:\n" + output);
        return new WrkSummary(Number(@"(\d+) requests in"), Error(1), Error(2), Error(3), Error(4),
            Number(@"Non-2xx or 3xx responses: (\d+)"), double.Parse(rate.Groups[1].Value, CultureInfo.InvariantCulture));
    }
}

internal static class Wrk
{
    /// <summary>Runs plain wrk against a port for a fixed time (the measurement's length) and returns its summary.</summary>
    public static async Task<WrkSummary> RunPlainAsync(int port, TimeSpan duration, string logPath, CancellationToken token)
    {
        var wrk = Child.Start("wrk", "wrk",
            ["-t", "2", "-c", "50", "-d", $"{duration.TotalSeconds:F0}s", "--timeout", "10s", $"http://127.0.0.1:{port}/"], logPath);
        if (await wrk.WaitForExitAsync(duration + TimeSpan.FromSeconds(30), token) is null)
            throw new BenchException("wrk did not finish:\n" + wrk.Tail());
        if (wrk.ExitCode != 0) throw new BenchException($"wrk failed (status {wrk.ExitCode}):\n{wrk.Tail()}");
        return WrkSummary.Parse(wrk.Output);
    }

    /// <summary>Ends a timeline run: SIGINT makes wrk stop its threads, print its summary and call done().</summary>
    public static async Task<WrkSummary> StopTimelineAsync(Child wrk, CancellationToken token)
    {
        wrk.Signal(Libc.SIGINT);
        if (await wrk.WaitForExitAsync(TimeSpan.FromSeconds(30), token) is null)
            throw new BenchException("wrk did not stop on SIGINT:\n" + wrk.Tail());
        if (wrk.ExitCode != 0) throw new BenchException($"wrk failed (status {wrk.ExitCode}):\n{wrk.Tail()}");
        return WrkSummary.Parse(wrk.Output);
    }
}

/// <summary>One 100 ms bucket of a timeline, all wrk threads merged.</summary>
internal sealed class Bucket
{
    public long Ok;
    public long Other;
    public long Failed;
    public long MaxMicroseconds;
    public readonly Dictionary<int, long> Histogram = [];
}

/// <summary>The merged output of timeline.lua: buckets by index (CLOCK_MONOTONIC µs / 100 000) and totals.</summary>
internal sealed class Timeline
{
    public const long BucketMicroseconds = 100_000;
    private const double BinsPerE = 100; // as in timeline.lua

    public SortedDictionary<long, Bucket> Buckets { get; } = [];
    public long Sent { get; private set; }
    public long AnsweredOk { get; private set; }
    public long AnsweredOther { get; private set; }
    public long Unanswered { get; private set; }
    public long InFlightAtEnd { get; private set; }
    public int Threads { get; private set; }

    public static Timeline Read(string path)
    {
        var timeline = new Timeline();
        var header = File.ReadAllLines(path);
        var wrkLine = header.FirstOrDefault(l => l.StartsWith("wrk ", StringComparison.Ordinal))
            ?? throw new BenchException($"{path}: no summary from timeline.lua's done()");
        timeline.Threads = int.Parse(wrkLine.Split(' ')[^1], CultureInfo.InvariantCulture);
        foreach (var line in header.Where(l => l.StartsWith("thread ", StringComparison.Ordinal)))
        {
            var f = line.Split(' ').Select(s => long.Parse(s == "thread" ? "0" : s, CultureInfo.InvariantCulture)).ToArray();
            timeline.Sent += f[2];
            timeline.AnsweredOk += f[3];
            timeline.AnsweredOther += f[4];
            timeline.Unanswered += f[5];
            timeline.InFlightAtEnd += f[6];
        }
        for (var t = 1; t <= timeline.Threads; t++)
        {
            foreach (var line in File.ReadLines($"{path}.{t}"))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length < 6 || f[0] != "b") throw new BenchException($"{path}.{t}: unexpected line '{line}'");
                var index = long.Parse(f[1], CultureInfo.InvariantCulture);
                if (!timeline.Buckets.TryGetValue(index, out var bucket)) timeline.Buckets[index] = bucket = new Bucket();
                bucket.Ok += long.Parse(f[2], CultureInfo.InvariantCulture);
                bucket.Other += long.Parse(f[3], CultureInfo.InvariantCulture);
                bucket.Failed += long.Parse(f[4], CultureInfo.InvariantCulture);
                bucket.MaxMicroseconds = Math.Max(bucket.MaxMicroseconds, long.Parse(f[5], CultureInfo.InvariantCulture));
                foreach (var pair in f.Skip(6))
                {
                    var colon = pair.IndexOf(':');
                    var bin = int.Parse(pair[..colon], CultureInfo.InvariantCulture);
                    bucket.Histogram[bin] = bucket.Histogram.GetValueOrDefault(bin) + long.Parse(pair[(colon + 1)..], CultureInfo.InvariantCulture);
                }
            }
        }
        // Each thread writes a bucket when it moves on to the next one, so the buckets hold everything but
        // each thread's last bucket: never more than its totals.
        if (timeline.Buckets.Values.Sum(b => b.Ok) > timeline.AnsweredOk || timeline.Buckets.Values.Sum(b => b.Other) > timeline.AnsweredOther ||
            timeline.Buckets.Values.Sum(b => b.Failed) > timeline.Unanswered)
            throw new BenchException($"{path}: the buckets count more than the threads' totals; the timeline is inconsistent");
        if (timeline.Sent != timeline.AnsweredOk + timeline.AnsweredOther + timeline.Unanswered + timeline.InFlightAtEnd)
            throw new BenchException($"{path}: requests sent do not add up to answered + unanswered + in flight");
        return timeline;
    }

    /// <summary>The bucket index that holds a Stopwatch timestamp (both count CLOCK_MONOTONIC).</summary>
    public static long BucketOf(long stopwatchTimestamp) =>
        (long)(stopwatchTimestamp / (double)Stopwatch.Frequency * 1_000_000) / BucketMicroseconds;

    public IEnumerable<Bucket> Range(long firstBucket, long lastBucket) =>
        Buckets.Where(b => b.Key >= firstBucket && b.Key <= lastBucket).Select(b => b.Value);

    /// <summary>The p-th percentile latency in ms of the answers in these buckets (the middle of its 1 % bin).</summary>
    public static double Percentile(IEnumerable<Bucket> buckets, double p)
    {
        var merged = new SortedDictionary<int, long>();
        foreach (var bucket in buckets)
        foreach (var (bin, count) in bucket.Histogram)
            merged[bin] = merged.GetValueOrDefault(bin) + count;
        var total = merged.Values.Sum();
        if (total == 0) return double.NaN;
        var rank = (long)Math.Ceiling(p / 100 * total);
        long seen = 0;
        foreach (var (bin, count) in merged)
        {
            seen += count;
            if (seen >= rank) return Math.Exp((bin + 0.5) / BinsPerE) / 1000;
        }
        return Math.Exp((merged.Keys.Last() + 0.5) / BinsPerE) / 1000;
    }

    public static double MaxMilliseconds(IEnumerable<Bucket> buckets) =>
        buckets.Select(b => b.MaxMicroseconds).DefaultIfEmpty(0).Max() / 1000.0;
}
