using Mono.Unix.Native;

namespace GSupervisor.Daemon;

/// <summary>Finds the command's executable as a shell would, so "not found" and "not executable" show before any child runs.</summary>
internal static class CommandResolver
{
    /// <param name="baseDirectory">Where a relative command or PATH entry starts from: the directory the child starts in.</param>
    public static string Resolve(string command, string? pathVariable, string baseDirectory)
    {
        if (command.Contains('/'))
        {
            var full = Path.GetFullPath(command, baseDirectory);
            return Check(full, command) ?? throw new StartupException(ExitCodes.NotFound,
                $"command not found: {command} (no such file)");
        }
        var searched = (pathVariable ?? "/usr/local/bin:/usr/bin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries);
        StartupException? notExecutable = null;
        foreach (var dir in searched)
        {
            var candidate = Path.Combine(Path.GetFullPath(dir, baseDirectory), command);
            try
            {
                if (Check(candidate, command) is { } found) return found;
            }
            catch (StartupException e) when (e.ExitCode == ExitCodes.NotExecutable)
            {
                notExecutable ??= e;
            }
        }
        throw notExecutable ?? new StartupException(ExitCodes.NotFound,
            $"command not found: {command} (searched PATH); give its full path or fix PATH");
    }

    /// <summary>The path if it is an executable file, null if nothing is there; throws if it exists but cannot run.</summary>
    private static string? Check(string path, string command)
    {
        if (Syscall.stat(path, out var st) != 0) return null;
        if ((st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
            throw new StartupException(ExitCodes.NotExecutable, $"command {command} is a directory, not a program");
        if (Syscall.access(path, AccessModes.X_OK) != 0)
            throw new StartupException(ExitCodes.NotExecutable,
                $"command {command} ({path}) is not executable; chmod +x it, or run it through its interpreter");
        return path;
    }
}
