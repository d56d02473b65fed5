using System.Globalization;

namespace GSupervisor.Daemon.Os;

/// <summary>Reads the process tree from /proc to tell whether a process belongs to a generation.</summary>
internal static class ProcessTree
{
    private const int MaxDepth = 64;

    /// <summary>The parent pid of <paramref name="pid"/>, or null if it is gone.</summary>
    public static int? ParentOf(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            // pid (comm) state ppid ...; comm may hold spaces and parentheses, so parse after the last ')'.
            var close = stat.LastIndexOf(')');
            var fields = stat[(close + 2)..].Split(' ');
            return int.Parse(fields[1], CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException or ArgumentOutOfRangeException)
        {
            return null;
        }
    }

    /// <summary>
    /// Of the candidate roots, the one that is <paramref name="pid"/> itself or an ancestor of it; null if none.
    /// </summary>
    public static int? FindRoot(int pid, IReadOnlyCollection<int> roots)
    {
        var current = pid;
        for (var depth = 0; depth < MaxDepth && current > 1; depth++)
        {
            if (roots.Contains(current)) return current;
            if (ParentOf(current) is not { } parent) return null;
            current = parent;
        }
        return null;
    }
}
