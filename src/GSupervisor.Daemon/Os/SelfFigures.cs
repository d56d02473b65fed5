namespace GSupervisor.Daemon.Os;

/// <summary>
/// The supervisor's own footprint, for `status`: resident memory and threads from /proc/self/status, open fds
/// from /proc/self/fd, and the managed heap as the GC last measured it. Read on request, never on a timer.
/// </summary>
internal sealed record SelfFigures(long RssBytes, long ManagedHeapBytes, long ManagedCommittedBytes, int Threads, int OpenFds)
{
    public static SelfFigures Read()
    {
        long rss = 0;
        var threads = 0;
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = ParseKiB(line) * 1024;
            else if (line.StartsWith("Threads:", StringComparison.Ordinal)) threads = int.Parse(line.AsSpan("Threads:".Length).Trim(), System.Globalization.CultureInfo.InvariantCulture);
        }
        // The enumeration's own directory fd is among those listed.
        var fds = Directory.EnumerateFileSystemEntries("/proc/self/fd").Count() - 1;
        var gc = GC.GetGCMemoryInfo();
        return new SelfFigures(rss, GC.GetTotalMemory(forceFullCollection: false), gc.TotalCommittedBytes, threads, fds);
    }

    private static long ParseKiB(string line) =>
        long.Parse(line.AsSpan(line.IndexOf(':') + 1).Trim().TrimEnd("kB").Trim(), System.Globalization.CultureInfo.InvariantCulture);
}
