// Overview
// --------
// Finds the gsupervisor daemons that run a given binary, for `gsupervisor upgrade --all` and `stop --all` (the
// package's maintainer scripts use them). A daemon is a process whose /proc/PID/exe is that file (or was it,
// before a package replaced it: "PATH (deleted)"), with the same root directory as ours (in a container the same
// path is another file; a unit's private /tmp is fine), run as a daemon rather than as one of the verbs. Its control socket is the --control on its command
// line or, without one, the default its own environment gives (RUNTIME_DIRECTORY, XDG_RUNTIME_DIR).

using System.Globalization;

namespace GSupervisor.Daemon.Os;

internal sealed record RunningSupervisor(int Pid, string ControlPath, string? Unit)
{
    public string Label => Unit is { } unit ? $"pid {Pid} ({unit})" : $"pid {Pid}";
}

internal static class RunningSupervisors
{
    private const string Deleted = " (deleted)";

    public static List<RunningSupervisor> Of(string executable)
    {
        var found = new List<RunningSupervisor>();
        var ourRoot = Identity("/");
        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid == Environment.ProcessId)
                continue;
            try
            {
                var exe = Link($"{directory}/exe");
                if (exe is null || (exe.EndsWith(Deleted, StringComparison.Ordinal) ? exe[..^Deleted.Length] : exe) != executable) continue;
                if (ourRoot is null || Identity($"{directory}/root") != ourRoot) continue;
                var arguments = File.ReadAllText($"{directory}/cmdline").Split('\0')[1..^1];
                if (arguments.Length > 0 && (ControlClient.Verbs.Contains(arguments[0]) || arguments[0].StartsWith("--upgrade-check", StringComparison.Ordinal)))
                    continue;
                var control = ControlOption(arguments) ?? ControlServer.DefaultPath(Environ($"{directory}/environ").GetValueOrDefault);
                found.Add(new RunningSupervisor(pid, control, Unit($"{directory}/cgroup")));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // It exited meanwhile, or is not ours to read.
            }
        }
        return found;
    }

    /// <summary>Whether process <paramref name="pid"/> still runs (is not a zombie or gone).</summary>
    public static bool IsRunning(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static string? ControlOption(string[] arguments)
    {
        for (var i = 0; i < arguments.Length && arguments[i] != "--"; i++)
        {
            if (arguments[i] == "--control" && i + 1 < arguments.Length) return arguments[i + 1];
            if (arguments[i].StartsWith("--control=", StringComparison.Ordinal)) return arguments[i]["--control=".Length..];
        }
        return null;
    }

    private static Dictionary<string, string> Environ(string path) =>
        File.ReadAllText(path).Split('\0', StringSplitOptions.RemoveEmptyEntries).Select(e => e.Split('=', 2))
            .Where(p => p.Length == 2).GroupBy(p => p[0]).ToDictionary(g => g.Key, g => g.First()[1]);

    /// <summary>The systemd unit the process runs in (the last .service of its cgroup path), if any.</summary>
    private static string? Unit(string cgroupFile)
    {
        var path = File.ReadAllLines(cgroupFile).Select(l => l.Split(':', 3)).Where(p => p.Length == 3).Select(p => p[2]).FirstOrDefault() ?? "";
        return path.Split('/').LastOrDefault(part => part.EndsWith(".service", StringComparison.Ordinal));
    }

    /// <summary>Device and inode of <paramref name="path"/> (links followed), or null.</summary>
    private static (ulong Device, ulong Inode)? Identity(string path) =>
        Mono.Unix.Native.Syscall.stat(path, out var st) == 0 ? (st.st_dev, st.st_ino) : null;

    private static string? Link(string path)
    {
        try
        {
            return Mono.Unix.UnixPath.ReadLink(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or InvalidOperationException)
        {
            return null;
        }
    }
}
