// gsupervisor: parse, bind, start, loop. Reads like a script; the parts live in CommandLine, Os/ and SupervisorHost.
// Started by an in-place upgrade (Upgrade/), it takes over what the earlier image handed it instead of binding.

using System.Globalization;
using GSupervisor.Daemon;
using GSupervisor.Daemon.Os;
using GSupervisor.Daemon.Upgrade;
using Serilog;
using Serilog.Sinks.SystemConsole.Themes;

// In run mode the supervisor's signals are blocked first, before anything that announces the supervisor (pid file,
// control socket, READY=1); a signal that arrives before the event loop reads it waits for it (Os/SupervisorSignals.cs).
var isVerb = args.Length > 0 && ControlClient.Verbs.Contains(args[0]);
// A run of a new binary that an upgrading supervisor makes to check it (Upgrade/UpgradeCheck.cs): binds nothing.
var isUpgradeCheck = args.Length > 0 && args[0] == UpgradeCheck.Flag;
// The runtime's DOTNET_* variables are the children's, not ours: start again without them (Os/RuntimeKnobs.cs).
if (!isVerb && !isUpgradeCheck) RuntimeKnobs.MoveAsideAndReexec(args);
using var signals = isVerb || isUpgradeCheck ? null : SupervisorSignals.Install();

// Mono.Posix's native half ships beside the binary (Native AOT does not embed it); without it nothing below works.
if (!Installation.LoadMonoPosixHelper())
{
    var problem = $"cannot load libMonoPosixHelper.so from {Installation.Directory}, where it ships beside the gsupervisor binary; reinstall gsupervisor";
    Libc.WriteLine(2, $"gsupervisor: {problem}");
    // An in-place upgrade to this binary: back to the earlier one, which goes on (Upgrade/ExecImage.cs).
    if (!isVerb && !isUpgradeCheck && ExecImage.TakeState() is { } handedOver)
        ExecImage.ReturnToEarlierImage(handedOver, [], problem, [Environment.GetCommandLineArgs()[0], .. args]);
    return ExitCodes.OsFile;
}

// Started with SIGCHLD ignored (inherited across exec), the kernel would reap our children itself and the
// reaper would never hear of an exit. Setting SIG_DFL installs no handler, so the runtime still never reaps.
Libc.signal(GSupervisor.Core.Signals.SIGCHLD, 0);
// Orphaned grandchildren come to us (and are reaped) instead of to init.
Libc.prctl(Libc.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

// Write through our own streams: touching Console.Out/Error would initialise the runtime's terminal
// handling, which installs a SIGCHLD handler that, as PID 1, reaps our children before we can.
var stdout = new StreamWriter(new FdWriteStream(1)) { AutoFlush = true };
var stderr = new StreamWriter(new FdWriteStream(2)) { AutoFlush = true };
Console.SetOut(stdout);
Console.SetError(stderr);

if (isVerb)
    return ControlClient.Run(args, stdout, stderr);
if (isUpgradeCheck)
    return UpgradeCheck.Run(args[1..], stdout);

var read = CommandLineReader.Read(args);
if (read.Settings is not { } settings)
{
    if (read.OutputIsError) stderr.WriteLine($"{LogFormats.ErrorPrefix()}gsupervisor: {read.Output}");
    else stdout.WriteLine(read.Output);
    return read.ExitCode;
}

// From here on the daemon's stderr is queued: the event loop never waits for a slow or stuck stderr.
var logStream = new QueuedFdWriteStream(2);
stderr = new StreamWriter(logStream) { AutoFlush = true };
Console.SetError(stderr);
// A crash on any thread: its reason is written out before the process ends (finally blocks do not run then).
AppDomain.CurrentDomain.UnhandledException += (_, e) =>
{
    stderr.WriteLine($"{LogFormats.ErrorPrefix()}gsupervisor: internal error, exiting: {e.ExceptionObject}");
    logStream.Drain(TimeSpan.FromSeconds(2));
};

var useColour = Libc.isatty(2) == 1 && Environment.GetEnvironmentVariable("NO_COLOR") is null;
var logConfiguration = new LoggerConfiguration().MinimumLevel.Is(settings.LogLevel);
using var logger = (LogFormats.Formatter(settings.LogFormat) is { } formatter
    ? logConfiguration.WriteTo.Console(formatter, standardErrorFromLevel: Serilog.Events.LogEventLevel.Verbose)
    : logConfiguration.WriteTo.Console(
        outputTemplate: LogFormats.TextTemplate,
        standardErrorFromLevel: Serilog.Events.LogEventLevel.Verbose,
        theme: useColour ? AnsiConsoleTheme.Code : ConsoleTheme.None,
        formatProvider: CultureInfo.InvariantCulture))
    .CreateLogger();

List<BoundListener>? listeners = null;
RuntimeDirectory? runtimeDirectory = null;
ControlServer? control = null;
MetricsServer? metrics = null;
Spawner? spawner = null;
// Started by an in-place upgrade: the earlier image's state, from the memfd it left (Upgrade/ExecImage.cs); and
// whether this image has taken over from it (until then, a failure returns to the earlier image).
byte[]? handedOverState = null;
UpgradeState? carried = null;
var tookOver = false;
try
{
    handedOverState = ExecImage.TakeState();
    carried = handedOverState is null ? null : UpgradeState.FromJson(handedOverState);
    var executable = Installation.Executable; // what `gsupervisor upgrade` execs, as it is on disk then
    var gate = new IntakeGate();
    var output = new OutputRelay(gate);
    LoopState state;
    NotifyServer notify;
    HandoffServer handoff;
    // What each generation starts with is planned when it starts (Launcher.cs); the first plan is made now, so a
    // command, directory or environment file that cannot work ends the start with one line before anything is bound.
    var launcher = new Launcher(settings.Chdir, Launcher.LogicalStartDirectory(), settings.EnvFile);
    if (carried is null)
    {
        launcher.Plan(settings.Command);
        listeners = Listeners.BindAll(settings.Listeners, settings.Backlog);
        spawner = Spawner.Open(reservedBelow: 3 + listeners.Count + 16);
        runtimeDirectory = RuntimeDirectory.Create(forOtherUser: settings.User is not null);
        control = ControlServer.Bind(settings.ControlPath);
        notify = new NotifyServer(runtimeDirectory.Own("notify"));
        handoff = new HandoffServer(runtimeDirectory.Own("handoff"));
        if (settings.Metrics is { } metricsSpec) metrics = MetricsServer.Bind(metricsSpec);
        state = new LoopState(new GSupervisor.Core.SupervisorStateMachine(settings.Policy, TimeProvider.System), settings.Command);
    }
    else
    {
        listeners = HandedOver.Listeners(carried);
        spawner = Spawner.Open(reservedBelow: 3 + listeners.Count + 16); // this version's exec helper, beside this binary
        runtimeDirectory = RuntimeDirectory.Adopt(carried.RuntimeDirectory);
        control = ControlServer.Adopt(settings.ControlPath, carried.ControlFd);
        notify = new NotifyServer(runtimeDirectory.Own("notify"), carried.NotifyFd);
        handoff = new HandoffServer(runtimeDirectory.Own("handoff"), carried.HandoffFd);
        metrics = HandedOver.Metrics(carried, settings.Metrics);
        state = HandedOver.LoopState(carried, settings.Policy, settings.Command, output, gate);
    }
    string? dotnetHook = null;
    if (settings.InjectDotnet)
    {
        dotnetHook = DotnetHook.Locate(settings.User, out var hookProblem);
        if (hookProblem is not null && carried is null) logger.Warning("{Problem}", hookProblem);
    }
    var parts = new HostParts(settings, args, launcher, executable, listeners, spawner, runtimeDirectory, control, notify, handoff,
        output, gate, dotnetHook, signals!, logStream.Drain, logger, metrics);
    var host = new SupervisorHost(parts, state, carried);

    if (carried is null)
    {
        logger.Information("gsupervisor {Version} (pid {Pid}) supervising {Command}", CommandLineReader.Version, Environment.ProcessId, string.Join(' ', settings.Command));
        if (launcher.Chdir is { } chdir)
            logger.Information("each generation starts in {Directory} as it resolves then (--chdir)", chdir);
        else if (launcher.LogicalDirectory is { } logical && logical != Environment.CurrentDirectory)
            logger.Information("each generation starts in {Directory} as it resolves then (now {Resolved}): a release switched by symlink is followed", logical, Environment.CurrentDirectory);
        for (var i = 0; i < listeners.Count; i++)
            logger.Information("listening on {Address} (fd {Fd} in the child, name {Name}){PortNote}", listeners[i].Address, 3 + i, listeners[i].Spec.FdName,
                listeners[i].Spec is { Port: 0, Kind: not GSupervisor.Core.ListenKind.Unix and not GSupervisor.Core.ListenKind.Systemd }
                    ? "; port 0 was given, so the kernel chose this port: it stays the same across reloads, not across restarts of gsupervisor"
                    : "");
        if (listeners.Count == 0)
            logger.Information("no --listen given: children get no sockets, reloads still overlap generations");
        if (metrics is not null)
            logger.Information("Prometheus metrics on {Address}, path /metrics (the supervisor's own socket; children do not get it)", metrics.Listener.Address);
        if (settings.PidFile is { } pidFile) PidFile.Write(pidFile);
    }
    else if (ExecImage.FailedUpgrade is null)
    {
        logger.Information("gsupervisor {Version} (pid {Pid}) took over in place from gsupervisor {From}: {Listeners} listeners, supervising {Command}",
            CommandLineReader.Version, Environment.ProcessId, carried.WrittenBy, listeners.Count, string.Join(' ', state.Command));
    }
    if (!signals!.AllThreadsBlock)
        logger.Debug("not every thread blocks the supervisor's signals; a signal that comes during an upgrade's exec may be lost");

    ExecImage.DropFallback();
    tookOver = true;
    return host.Run();
}
catch (Exception e) when (handedOverState is not null && !tookOver)
{
    // Only a check that passed leads here, so this is a bug, or the installation changed since the check: the
    // earlier image takes over again rather than every child ending with this process.
    var problem = e is StartupException or UpgradeStateException ? e.Message : e.ToString();
    logger.Error("gsupervisor {Version} cannot take over from the earlier image: {Problem}; returning to it", CommandLineReader.Version, problem);
    logStream.Drain(TimeSpan.FromSeconds(2));
    var errno = ExecImage.ReturnToEarlierImage(handedOverState, carried?.CrossingFds() ?? [], e.Message, [Environment.GetCommandLineArgs()[0], .. args]);
    logger.Fatal("cannot return to the earlier image either ({Error}); exiting", ErrorNumbers.Describe(errno));
    return ExitCodes.Software;
}
catch (StartupException e)
{
    stderr.WriteLine($"{LogFormats.ErrorPrefix()}gsupervisor: {e.Message}");
    return e.ExitCode;
}
catch (Exception e)
{
    // A bug outside the event loop's per-event guard. The children get their stop signal from the kernel
    // (parent-death signal) once this process is gone.
    logger.Fatal(e, "internal error, exiting");
    return ExitCodes.Software;
}
finally
{
    try
    {
        // Only an exit gets here: a successful exec (an upgrade's, or the return to the earlier image) never returns.
        if (listeners is not null) Listeners.CloseAll(listeners);
        spawner?.Dispose();
        runtimeDirectory?.Dispose();
        control?.Remove();
        metrics?.Close();
        if (settings.PidFile is { } pidFile) PidFile.Remove(pidFile);
    }
    finally
    {
        logStream.Drain(TimeSpan.FromSeconds(2));
    }
}

