// Overview
// --------
// What a generation starts with is decided just before it starts, not once when the supervisor starts, so that
// a deploy reaches the next generation:
//   - its directory: --chdir DIR as DIR resolves now (a release switched by `ln -sfn releases/42 current` is
//     followed), or else the logical directory the supervisor was started in (PWD, as a shell sets it, when it
//     names the supervisor's working directory) resolved again, or else the supervisor's own directory;
//   - its command: the one the supervisor runs now (the command line's, or the last one `gsupervisor reload --
//     COMMAND` put into service), looked up as a shell would from that directory and PATH;
//   - its variables from --env-file, read again.
// A plan that cannot run (no such command, not executable, a dotnet app whose .dll is missing, an unreadable
// environment file, a directory that does not resolve) is refused with one line before anything starts; the
// serving generation goes on. Only here does the supervisor look at the file system on a child's behalf.

using GSupervisor.Core;
using GSupervisor.Daemon.Os;

namespace GSupervisor.Daemon;

/// <summary>Everything one generation is started with, as decided when it starts.</summary>
/// <param name="Argv">The command and its arguments, as given.</param>
/// <param name="CommandPath">The command's executable, resolved.</param>
/// <param name="Directory">The directory the child starts in, every symlink resolved.</param>
/// <param name="ChangesDirectory">Whether the child is put into <paramref name="Directory"/> (else it starts where the supervisor is).</param>
/// <param name="FileVariables">The assignments of the environment file, or none.</param>
/// <param name="Warnings">What was skipped or assumed, for the log.</param>
internal sealed record Launch(
    IReadOnlyList<string> Argv,
    string CommandPath,
    string Directory,
    bool ChangesDirectory,
    IReadOnlyList<KeyValuePair<string, string>> FileVariables,
    IReadOnlyList<string> Warnings);

/// <summary>Plans each generation's start (see the overview).</summary>
/// <param name="chdir">--chdir DIR (absolute), or null.</param>
/// <param name="logicalDirectory">The logical directory the supervisor started in (<see cref="LogicalStartDirectory"/>), or null.</param>
/// <param name="envFile">--env-file FILE (absolute), or null.</param>
internal sealed class Launcher(string? chdir, string? logicalDirectory, string? envFile)
{
    public string? Chdir { get; } = chdir;
    public string? LogicalDirectory { get; } = logicalDirectory;
    public string? EnvFile { get; } = envFile;

    /// <summary>
    /// The directory the supervisor was started in as its starter named it: PWD when it is absolute and names the
    /// same directory as the working directory (a shell in /srv/app/current sets PWD so, while the working directory
    /// is the resolved /srv/app/releases/41); null otherwise.
    /// </summary>
    public static string? LogicalStartDirectory()
    {
        if (Environment.GetEnvironmentVariable("PWD") is not { Length: > 0 } pwd || !pwd.StartsWith('/')) return null;
        if (Mono.Unix.Native.Syscall.stat(pwd, out var named) != 0 || Mono.Unix.Native.Syscall.stat(".", out var current) != 0) return null;
        return named.st_dev == current.st_dev && named.st_ino == current.st_ino ? pwd : null;
    }

    /// <summary>Plans the start of a generation that runs <paramref name="argv"/>.</summary>
    /// <exception cref="StartupException">It cannot run; the message says why in one line, the code is the exit code a first start would end with.</exception>
    public Launch Plan(IReadOnlyList<string> argv)
    {
        var warnings = new List<string>();
        var (directory, changes) = ResolveDirectory(warnings);
        var variables = ReadEnvironmentFile(warnings);
        var path = variables.LastOrDefault(v => v.Key == "PATH").Value ?? Environment.GetEnvironmentVariable("PATH");
        var commandPath = CommandResolver.Resolve(argv[0], path, directory);
        CheckDotnetApp(argv, commandPath, directory);
        return new Launch(argv, commandPath, directory, changes, variables, warnings);
    }

    private (string Directory, bool Changes) ResolveDirectory(List<string> warnings)
    {
        if (Chdir is { } chdir)
        {
            var resolved = Libc.RealPath(chdir) ?? throw new StartupException(ExitCodes.NoInput,
                $"--chdir {chdir} does not resolve to a directory ({ErrorNumbers.Describe(ErrorNumbers.Last)}); create it or point the link at a release");
            if (!Directory.Exists(resolved))
                throw new StartupException(ExitCodes.NoInput, $"--chdir {chdir} resolves to {resolved}, which is not a directory");
            return (resolved, true);
        }
        var own = Environment.CurrentDirectory;
        if (LogicalDirectory is { } logical)
        {
            if (Libc.RealPath(logical) is { } resolved && Directory.Exists(resolved)) return (resolved, true);
            warnings.Add($"the directory gsupervisor was started in, {logical}, no longer resolves ({ErrorNumbers.Describe(ErrorNumbers.Last)}); the child starts in {own}");
        }
        return (own, false);
    }

    private List<KeyValuePair<string, string>> ReadEnvironmentFile(List<string> warnings)
    {
        if (EnvFile is not { } file) return [];
        string text;
        try
        {
            text = File.ReadAllText(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new StartupException(ExitCodes.NoInput, $"cannot read --env-file {file}: {e.Message}");
        }
        if (!EnvironmentFile.TryParse(text, out var contents, out var error))
            throw new StartupException(ExitCodes.DataError, $"--env-file {file}, {error}; fix the file");
        warnings.AddRange(contents!.Warnings.Select(w => $"--env-file {file}, {w}"));
        return [.. contents.Variables];
    }

    /// <summary>`dotnet APP.dll`: the first argument that names a .dll is the app, and must be there.</summary>
    private static void CheckDotnetApp(IReadOnlyList<string> argv, string commandPath, string directory)
    {
        if (Path.GetFileName(commandPath) != "dotnet") return;
        var app = argv.Skip(1).FirstOrDefault(a => !a.StartsWith('-') && a.EndsWith(".dll", StringComparison.OrdinalIgnoreCase));
        if (app is null) return;
        var full = Path.GetFullPath(app, directory);
        if (!File.Exists(full))
            throw new StartupException(ExitCodes.NotFound,
                $"cannot run `{string.Join(' ', argv)}`: {app} does not exist{(app.StartsWith('/') ? "" : $" in {directory}")}; deploy it, or fix the command");
    }
}
