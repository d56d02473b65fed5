// Overview
// --------
// What /proc says about processes, for two decisions that hang on a generation being a process group (each
// child leads its own group, which its descendants inherit):
//   * which generation a process belongs to (a notify datagram's or a handoff connection's sender): the one
//     whose leader's pid is the sender's process-group id. Unlike walking parent pids, this survives a
//     descendant being re-parented (to the supervisor, a subreaper) when its parent exits, and a group id cannot
//     be reused while any member lives, so a recycled pid is not taken for a member. A process that leaves its
//     group (setsid, setpgid) leaves its generation too;
//   * whether a generation whose leader has exited still has members draining (KillMode=control-group).

using System.Globalization;

namespace GSupervisor.Daemon.Os;

internal static class ProcessTree
{
    /// <summary>The fields of /proc/PID/stat that matter here.</summary>
    public readonly record struct Stat(char State, int ParentPid, int ProcessGroup);

    /// <summary>/proc/PID/stat of <paramref name="pid"/>, or null if it is gone.</summary>
    public static Stat? Read(int pid)
    {
        try
        {
            return Parse(File.ReadAllText($"/proc/{pid}/stat"));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Parses "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses, so fields count from the last ')'.</summary>
    internal static Stat? Parse(string stat)
    {
        var close = stat.LastIndexOf(')');
        if (close < 0 || close + 2 >= stat.Length) return null;
        var fields = stat[(close + 2)..].Split(' ');
        return fields.Length >= 3 && fields[0].Length == 1
               && int.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out var ppid)
               && int.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out var pgrp)
            ? new Stat(fields[0][0], ppid, pgrp)
            : null;
    }

    /// <summary>The process group of <paramref name="pid"/>, or null if it is gone.</summary>
    public static int? ProcessGroupOf(int pid) => Read(pid)?.ProcessGroup;

    /// <summary>Whether any process but <paramref name="except"/> (the reaped leader, still a zombie) is alive in group <paramref name="processGroup"/>.</summary>
    public static bool HasLiveMembers(int processGroup, int except)
    {
        foreach (var entry in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid == except) continue;
            if (Read(pid) is { ProcessGroup: var group, State: not ('Z' or 'X') } && group == processGroup) return true;
        }
        return false;
    }
}
