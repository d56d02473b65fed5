namespace GSupervisor.Core;

/// <summary>
/// What the supervisor counts of its reloads, for `gsupervisor status` and the Prometheus metrics: how many
/// finished either way, and how long each successful one took from the new generation's start (the request,
/// unless it queued behind another reload) to its READY, as a histogram with Prometheus's cumulative buckets.
/// A reload abandoned by a shutdown is neither.
/// </summary>
public sealed class ReloadStatistics
{
    /// <summary>Upper bounds of the duration buckets, in seconds; a last bucket (+Inf) holds the rest.</summary>
    public static readonly IReadOnlyList<double> BucketBounds = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

    private readonly long[] _bucketCounts = new long[BucketBounds.Count + 1];

    public long Succeeded { get; private set; }
    public long Failed { get; private set; }
    /// <summary>Reloads observed in the histogram (the successful ones).</summary>
    public long DurationCount { get; private set; }
    public TimeSpan DurationSum { get; private set; }

    /// <summary>Observations per bucket, not cumulative; the last one is +Inf.</summary>
    public IReadOnlyList<long> BucketCounts => _bucketCounts;

    internal void Record(bool succeeded, TimeSpan? tookToReady)
    {
        if (!succeeded)
        {
            Failed++;
            return;
        }
        Succeeded++;
        if (tookToReady is not { } took) return;
        var seconds = took.TotalSeconds;
        var bucket = 0;
        while (bucket < BucketBounds.Count && seconds > BucketBounds[bucket]) bucket++;
        _bucketCounts[bucket]++;
        DurationCount++;
        DurationSum += took;
    }

    internal void Restore(long succeeded, long failed, IReadOnlyList<long> bucketCounts, long sumUs)
    {
        Succeeded = succeeded;
        Failed = failed;
        // Counts from a version with other buckets cannot be placed: they are dropped, the totals stay.
        if (bucketCounts.Count != _bucketCounts.Length) return;
        for (var i = 0; i < _bucketCounts.Length; i++) _bucketCounts[i] = bucketCounts[i];
        DurationCount = bucketCounts.Sum();
        DurationSum = TimeSpan.FromMicroseconds(sumUs);
    }
}
