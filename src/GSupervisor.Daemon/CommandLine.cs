// Overview
// --------
// The command line: CommandLineParser reads the options, then every value is checked here so that bad input
// ends in one line naming the problem and the fix, with exit code 64, before anything is bound or started.
// Everything after "--" is the command to run.

using System.Diagnostics.CodeAnalysis;
using CommandLine;
using CommandLine.Text;
using GSupervisor.Core;
using Serilog.Events;

namespace GSupervisor.Daemon;

internal sealed class RunOptions
{
    [Option("listen", Separator = '\0', HelpText = "Socket to bind and hand to the child, repeatable: [NAME=]ADDRESS with ADDRESS :PORT, HOST:PORT, [V6ADDR]:PORT, unix:PATH[,mode=0660], or systemd / systemd:NAME to adopt sockets systemd passed.")]
    public IEnumerable<string> Listen { get; set; } = [];

    [Option("ready", Default = "notify", HelpText = "How a new child shows it is ready: notify (READY=1 via sd_notify or the handoff socket) or delay:DURATION (alive that long).")]
    public string Ready { get; set; } = "notify";

    [Option("ready-timeout", Default = "60s", HelpText = "How long a new child may take to become ready before it is stopped and the old one keeps serving.")]
    public string ReadyTimeout { get; set; } = "60s";

    [Option("stop-timeout", Default = "30s", HelpText = "How long a child may drain after the stop signal before SIGKILL.")]
    public string StopTimeout { get; set; } = "30s";

    [Option("probation", Default = "0s", HelpText = "After a reload, how long the new child serves beside the old one before the old one is stopped; if the new one exits or reports failure (WATCHDOG=trigger) meanwhile, it is stopped instead and the old one serves on. 0s: stop the old one as soon as the new one is ready.")]
    public string Probation { get; set; } = "0s";

    [Option("stop-signal", Default = "SIGTERM", HelpText = "Signal that asks a child to stop.")]
    public string StopSignal { get; set; } = "SIGTERM";

    [Option("backlog", Default = 4096, HelpText = "listen() backlog of TCP and Unix listeners (capped by net.core.somaxconn).")]
    public int Backlog { get; set; } = 4096;

    [Option("pid-file", HelpText = "Write the supervisor's pid to this file; removed on exit.")]
    public string? PidFile { get; set; }

    [Option("log-level", Default = "info", HelpText = "debug, info, warning or error.")]
    public string LogLevel { get; set; } = "info";

    [Option("log-format", Default = "auto", HelpText = "The supervisor's own log lines: text (timestamp, level, message), json (an object per line), or auto: with syslog priorities and no timestamp under the systemd journal, else text. Children's output is relayed as it is.")]
    public string LogFormat { get; set; } = "auto";

    [Option("control", HelpText = "Control socket for gsupervisor status/reload/stop (default: $RUNTIME_DIRECTORY/control.sock, $XDG_RUNTIME_DIR/gsupervisor/control.sock or /run/gsupervisor/control.sock).")]
    public string? Control { get; set; }

    [Option("user", HelpText = "Run children as this user (name or uid); the supervisor must run as root. Their group defaults to the user's primary group.")]
    public string? User { get; set; }

    [Option("group", HelpText = "Run children with this primary group (name or gid); needs --user.")]
    public string? Group { get; set; }

    [Option("restart-delay", Default = "250ms", HelpText = "Wait before restarting a child that died; doubles with each death in a row.")]
    public string RestartDelay { get; set; } = "250ms";

    [Option("restart-max-delay", Default = "30s", HelpText = "Cap of the doubling restart delay. A child that served 10s resets it.")]
    public string RestartMaxDelay { get; set; } = "30s";

    [Option("no-restart", HelpText = "Do not restart a child that dies; exit with its status instead.")]
    public bool NoRestart { get; set; }

    [Option("metrics", HelpText = "Serve Prometheus metrics at http://ADDRESS/metrics: [HOST]:PORT or unix:PATH. The supervisor's own socket, never handed to children. Off by default.")]
    public string? Metrics { get; set; }

    [Option("chdir", HelpText = "Start each new generation in DIR as it resolves then, so a release switched by symlink (current -> releases/42) is what the next reload runs. Default: the directory gsupervisor was started in, as its PWD names it (a symlinked path is resolved again at each start).")]
    public string? Chdir { get; set; }

    [Option("env-file", HelpText = "Read the children's environment from FILE (systemd's EnvironmentFile= syntax: KEY=VALUE lines, # comments, quotes) again before each generation starts; its values override gsupervisor's own environment.")]
    public string? EnvFile { get; set; }

    [Option("no-inject", HelpText = "Do not inject gsupervisor's ASP.NET Core integration into .NET children (DOTNET_STARTUP_HOOKS): an app then drains only if it uses the GSupervisor.AspNetCore package itself.")]
    public bool NoInject { get; set; }

    [Value(0, MetaName = "COMMAND", HelpText = "After --: the command to run and its arguments.")]
    public IEnumerable<string> Command { get; set; } = [];
}

/// <summary>The validated settings of a run.</summary>
internal sealed record RunSettings(
    IReadOnlyList<ListenSpec> Listeners,
    IReadOnlyList<string> Command,
    SupervisorPolicy Policy,
    int Backlog,
    string? PidFile,
    LogEventLevel LogLevel,
    LogFormat LogFormat,
    string ControlPath,
    Os.ChildUser? User,
    bool InjectDotnet = true,
    ListenSpec? Metrics = null,
    string? Chdir = null,
    string? EnvFile = null);

internal static class CommandLineReader
{
    public const string Usage = "usage: gsupervisor [--listen [NAME=]ADDRESS]... [OPTIONS] -- COMMAND [ARGS...]";

    /// <summary>Either settings, or an exit code with text to print (help and version exit 0 on stdout).</summary>
    public sealed record Result(RunSettings? Settings, int ExitCode, string? Output, bool OutputIsError);

    // CommandLineParser reads the options' attributes and sets their properties by reflection (see the csproj).
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(RunOptions))]
    public static Result Read(string[] args)
    {
        using var parser = new Parser(s =>
        {
            s.HelpWriter = null;
            s.EnableDashDash = true;
            s.AllowMultiInstance = true;
            s.CaseSensitive = true;
            s.AutoHelp = true;
            s.AutoVersion = true;
        });
        var parsed = parser.ParseArguments<RunOptions>(args);
        if (parsed is NotParsed<RunOptions> notParsed)
        {
            var errors = notParsed.Errors.ToList();
            if (errors.Any(e => e.Tag == ErrorType.HelpRequestedError))
                return new Result(null, ExitCodes.Ok, HelpText(parsed), false);
            if (errors.Any(e => e.Tag == ErrorType.VersionRequestedError))
                return new Result(null, ExitCodes.Ok, $"gsupervisor {Version}", false);
            return UsageError(Describe(errors.First()));
        }
        return Validate(((Parsed<RunOptions>)parsed).Value);
    }

    public static string Version =>
        typeof(CommandLineReader).Assembly.GetName().Version is { } v ? $"{v.Major}.{v.Minor}.{v.Build}" : "0.0.0";

    private static string HelpText(ParserResult<RunOptions> parsed)
    {
        var help = CommandLine.Text.HelpText.AutoBuild(parsed, h =>
        {
            h.Heading = $"gsupervisor {Version} - zero-downtime restarts for network services";
            h.Copyright = "";
            h.AddPreOptionsLine(Usage);
            h.AddPreOptionsLine("");
            h.AddPreOptionsLine("Binds the listeners, runs COMMAND with them at fds 3.. (LISTEN_FDS), and on SIGUSR2 or SIGHUP");
            h.AddPreOptionsLine("starts a new child, waits until it is ready, then stops the old one.");
            h.AddPostOptionsLine("Signals: SIGUSR2/SIGHUP reload; SIGTERM/SIGINT/SIGQUIT stop all children and exit 0 (a second SIGINT kills at once).");
            h.AddPostOptionsLine("Exit codes: 64 usage, 69 address unavailable, 73 cannot create socket file, 77 permission denied,");
            h.AddPostOptionsLine("126 command not executable, 127 command not found, 1 (or the child's status) when the first child never became ready.");
            h.AdditionalNewLineAfterOption = false;
            h.AddDashesToOption = true;
            return h;
        }, e => e, verbsIndex: false, maxDisplayWidth: 100);
        return help.ToString();
    }

    private static string Describe(Error error) => error switch
    {
        UnknownOptionError u => $"unknown option '{(u.Token.Length == 1 ? "-" : "--")}{u.Token}'; run gsupervisor --help for the options",
        MissingValueOptionError m => $"option --{m.NameInfo.LongName} needs a value",
        BadFormatConversionError b => $"option --{b.NameInfo.LongName} has a malformed value",
        RepeatedOptionError r => $"option --{r.NameInfo.LongName} is given more than once",
        SequenceOutOfRangeError s => $"option --{s.NameInfo.LongName} has the wrong number of values",
        BadFormatTokenError t => $"cannot read '{t.Token}'; options start with --",
        _ => $"invalid command line ({error.Tag}); run gsupervisor --help",
    };

    private static Result UsageError(string message) => new(null, ExitCodes.Usage, message, true);

    private static Result Validate(RunOptions o)
    {
        var specs = new List<ListenSpec>();
        foreach (var text in o.Listen)
        {
            if (!ListenSpec.TryParse(text, out var spec, out var error)) return UsageError(error);
            specs.Add(spec!);
        }
        if (!ListenSpec.TryValidateSet(specs, out var setError)) return UsageError(setError);
        ListenSpec? metrics = null;
        if (o.Metrics is { } metricsText)
        {
            if (!ListenSpec.TryParse(metricsText, out metrics, out var metricsError)) return UsageError($"--metrics: {metricsError}");
            if (metrics!.Kind == ListenKind.Systemd || metrics.Name is not null)
                return UsageError($"--metrics {metricsText}: give an address of its own, [HOST]:PORT or unix:PATH");
            if (!ListenSpec.TryValidateSet([.. specs, metrics], out _))
                return UsageError($"--metrics {metricsText} asks for an address a --listen has too; give the metrics an address of their own");
        }

        var command = o.Command.ToList();
        if (command.Count == 0)
            return UsageError("no command to run; put it after '--', e.g. gsupervisor --listen :8080 -- dotnet app.dll");
        if (command[0].Length == 0)
            return UsageError("the command is an empty string");

        var policy = new SupervisorPolicy { Restart = !o.NoRestart };
        if (o.Ready == "notify")
        {
            policy = policy with { ReadyMode = ReadyMode.Notify };
        }
        else if (o.Ready.StartsWith("delay:", StringComparison.Ordinal))
        {
            if (!Duration.TryParse(o.Ready["delay:".Length..], out var delay, out var error))
                return UsageError($"--ready {o.Ready}: {error}");
            policy = policy with { ReadyMode = ReadyMode.Delay, ReadyDelay = delay };
        }
        else
        {
            return UsageError($"--ready '{o.Ready}' is not a readiness mode; use --ready notify or --ready delay:2s");
        }

        if (!Duration.TryParse(o.ReadyTimeout, out var readyTimeout, out var rtError))
            return UsageError($"--ready-timeout: {rtError}");
        if (readyTimeout <= TimeSpan.Zero) return UsageError("--ready-timeout must be more than 0");
        if (!Duration.TryParse(o.StopTimeout, out var stopTimeout, out var stError))
            return UsageError($"--stop-timeout: {stError}");
        if (!Duration.TryParse(o.Probation, out var probation, out var probationError))
            return UsageError($"--probation: {probationError}");
        if (!Signals.TryParseStopSignal(o.StopSignal, out var stopSignal, out var sigError))
            return UsageError($"--stop-signal: {sigError}");
        if (policy.ReadyMode == ReadyMode.Delay && o.ReadyTimeout != "60s")
            return UsageError("--ready-timeout applies to --ready notify only; with --ready delay:D the child is ready after D");
        if (!Duration.TryParse(o.RestartDelay, out var restartDelay, out var rdError))
            return UsageError($"--restart-delay: {rdError}");
        if (restartDelay <= TimeSpan.Zero)
            return UsageError("--restart-delay must be more than 0, or a crashing child would be restarted in a tight loop");
        if (!Duration.TryParse(o.RestartMaxDelay, out var restartMaxDelay, out var rmError))
            return UsageError($"--restart-max-delay: {rmError}");
        if (restartMaxDelay < restartDelay)
            return UsageError($"--restart-max-delay {o.RestartMaxDelay} is less than --restart-delay {o.RestartDelay}; the cap must be at least the first delay");
        if (o.NoRestart && (o.RestartDelay != "250ms" || o.RestartMaxDelay != "30s"))
            return UsageError("--restart-delay and --restart-max-delay conflict with --no-restart; drop one of them");
        if (o.Backlog is < 1 or > 65535)
            return UsageError($"--backlog {o.Backlog} is out of range; use 1 to 65535");

        LogEventLevel level;
        switch (o.LogLevel.ToLowerInvariant())
        {
            case "debug": level = LogEventLevel.Debug; break;
            case "info": level = LogEventLevel.Information; break;
            case "warning" or "warn": level = LogEventLevel.Warning; break;
            case "error": level = LogEventLevel.Error; break;
            default: return UsageError($"--log-level '{o.LogLevel}' is not a level; use debug, info, warning or error");
        }
        LogFormat logFormat;
        switch (o.LogFormat.ToLowerInvariant())
        {
            case "auto": logFormat = LogFormat.Auto; break;
            case "text": logFormat = LogFormat.Text; break;
            case "json": logFormat = LogFormat.Json; break;
            default: return UsageError($"--log-format '{o.LogFormat}' is not a format; use auto, text or json");
        }

        if (o.PidFile is { Length: 0 }) return UsageError("--pid-file needs a path");
        if (o.Chdir is { Length: 0 }) return UsageError("--chdir needs a directory");
        if (o.EnvFile is { Length: 0 }) return UsageError("--env-file needs a file");
        // Relative to where gsupervisor starts; kept as paths (not resolved) so that a symlink in them is followed anew.
        var chdir = o.Chdir is { } dir ? Path.GetFullPath(dir) : null;
        var envFile = o.EnvFile is { } file ? Path.GetFullPath(file) : null;
        var control = o.Control ?? Os.ControlServer.DefaultPath();
        if (!control.StartsWith('/') || System.Text.Encoding.UTF8.GetByteCount(control) > ListenSpec.MaxUnixPathBytes)
            return UsageError($"--control '{control}' must be an absolute path of at most {ListenSpec.MaxUnixPathBytes} bytes");

        Os.ChildUser? user = null;
        if (o.User is not null || o.Group is not null)
        {
            if (o.User is null) return UsageError("--group needs --user");
            var passwd = uint.TryParse(o.User, out var uidNumber) ? Mono.Unix.Native.Syscall.getpwuid(uidNumber) : Mono.Unix.Native.Syscall.getpwnam(o.User);
            if (passwd is null) return UsageError($"--user '{o.User}': no such user");
            var gid = passwd.pw_gid;
            if (o.Group is not null)
            {
                var group = uint.TryParse(o.Group, out var gidNumber) ? Mono.Unix.Native.Syscall.getgrgid(gidNumber) : Mono.Unix.Native.Syscall.getgrnam(o.Group);
                if (group is null) return UsageError($"--group '{o.Group}': no such group");
                gid = group.gr_gid;
            }
            if (Mono.Unix.Native.Syscall.geteuid() != 0)
                return UsageError("--user and --group need gsupervisor to run as root; run it as the service's user instead");
            user = new Os.ChildUser(passwd.pw_name, passwd.pw_uid, gid, passwd.pw_dir);
        }

        policy = policy with
        {
            ReadyTimeout = readyTimeout, StopTimeout = stopTimeout, StopSignal = stopSignal,
            RestartBackoffInitial = restartDelay, RestartBackoffMax = restartMaxDelay, Probation = probation,
        };
        return new Result(new RunSettings(specs, command, policy, o.Backlog, o.PidFile, level, logFormat, control, user, InjectDotnet: !o.NoInject, Metrics: metrics,
            Chdir: chdir, EnvFile: envFile), ExitCodes.Ok, null, false);
    }
}
