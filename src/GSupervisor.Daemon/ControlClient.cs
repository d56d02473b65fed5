// Overview
// --------
// The verbs `gsupervisor status | reload | promote | rollback | upgrade | stop`: thin clients of the daemon's control socket. Each
// sends one request line and prints the reply, from a server of the caller's own user or root only
// (SO_PEERCRED). Exit codes: 0 done; 1 the reload failed (rolled back), the upgrade was refused, or there was no
// probation to promote or roll back; 64 usage; a reload refused before anything started, with the exit code a first
// start would end with (127 command not found, 126 not executable, 65/66 an --env-file or --chdir that cannot be read);
// 69 no daemon answers on the socket; 75 timed out waiting; 77 permission denied, or the server is another
// user's. `upgrade --all` and `stop --all` do it for every daemon that runs this binary (Os/RunningSupervisors.cs).

using System.Diagnostics.CodeAnalysis;
using System.Net.Sockets;
using System.Text;
using CommandLine;
using GSupervisor.Core;

namespace GSupervisor.Daemon;

internal abstract class ControlOptions
{
    [Option("control", HelpText = "The daemon's control socket (default: $RUNTIME_DIRECTORY/control.sock, $XDG_RUNTIME_DIR/gsupervisor/control.sock or /run/gsupervisor/control.sock).")]
    public string? Control { get; set; }
}

[Verb("status", HelpText = "Show the serving generation, every generation's pid and state, listeners, uptime, restarts and the last reload.")]
internal sealed class StatusOptions : ControlOptions
{
    [Option("json", HelpText = "Print JSON.")]
    public bool Json { get; set; }
}

[Verb("reload", HelpText = "Ask the daemon to reload (as SIGUSR2): start a new generation and stop the old one once it is ready. After --, the command the new generation runs (and later reloads, restarts and upgrades, once it serves). Refused, before anything starts, if the command or the --env-file cannot work.")]
internal sealed class ReloadOptions : ControlOptions
{
    [Value(0, MetaName = "COMMAND", HelpText = "After --: the command the next generation runs instead of the current one.")]
    public IEnumerable<string> Command { get; set; } = [];

    [Option("wait", HelpText = "Return only when the reload finished: exit 0 if the new generation serves (with --probation: once it passed), 1 with the reason if it was rolled back.")]
    public bool Wait { get; set; }

    [Option("timeout", Default = "5m", HelpText = "With --wait: give up after this long (exit 75).")]
    public string Timeout { get; set; } = "5m";
}

[Verb("promote", HelpText = "End the probation (--probation) now: the generation on probation passes and serves alone, the old one is stopped.")]
internal sealed class PromoteOptions : ControlOptions
{
}

[Verb("rollback", HelpText = "End the probation (--probation) now as failed: the generation on probation is drained and the old one serves on.")]
internal sealed class RollbackOptions : ControlOptions
{
}

[Verb("upgrade", HelpText = "Ask the daemon to re-execute its binary, as it is on disk now, in place: same pid, children untouched. The new binary is checked first; if it fails, the running one goes on.")]
internal sealed class UpgradeOptions : ControlOptions
{
    [Option("wait", HelpText = "Return only when it is done: exit 0 once the new binary serves, 1 with the reason if the upgrade was refused.")]
    public bool Wait { get; set; }

    [Option("timeout", Default = "2m", HelpText = "With --wait: give up after this long (exit 75).")]
    public string Timeout { get; set; } = "2m";

    [Option("all", HelpText = "Upgrade every gsupervisor daemon that runs this binary (each one's control socket), waiting for each; what the package does on install.")]
    public bool All { get; set; }
}

[Verb("stop", HelpText = "Ask the daemon to stop its children and exit (as SIGTERM).")]
internal sealed class StopOptions : ControlOptions
{
    [Option("all", HelpText = "Stop every gsupervisor daemon that runs this binary and wait until each has exited; what the package does on removal.")]
    public bool All { get; set; }

    [Option("timeout", Default = "2m", HelpText = "With --all: give up waiting for the daemons to exit after this long (exit 75).")]
    public string Timeout { get; set; } = "2m";
}

internal static class ControlClient
{
    public const int ReloadFailed = 1;
    public const int TimedOut = 75;

    public static readonly string[] Verbs = ["status", "reload", "promote", "rollback", "upgrade", "stop"];

    // CommandLineParser reads the verbs' attributes and sets their properties by reflection (see the csproj).
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(StatusOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(ReloadOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(PromoteOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(RollbackOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(UpgradeOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(StopOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(ControlOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(RunOptions))]
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (args[0] == "reload" && RestartOnlyOption(args) is { } fixedOption)
        {
            stderr.WriteLine($"gsupervisor: reload: --{fixedOption} is set when gsupervisor starts and a reload cannot change it" +
                (fixedOption == "listen" ? " (the sockets are bound once, so that no connection is refused)" : "") +
                "; restart gsupervisor to change it (systemctl restart NAME). A reload applies a new command (reload -- COMMAND), " +
                "the --env-file's contents, and the release --chdir (or the start directory) resolves to");
            return ExitCodes.Usage;
        }
        using var parser = new Parser(s => { s.HelpWriter = null; s.CaseSensitive = true; s.AutoHelp = true; s.EnableDashDash = true; });
        var parsed = parser.ParseArguments<StatusOptions, ReloadOptions, PromoteOptions, RollbackOptions, UpgradeOptions, StopOptions>(args);
        if (parsed is NotParsed<object> notParsed)
        {
            if (notParsed.Errors.Any(e => e.Tag is ErrorType.HelpRequestedError or ErrorType.HelpVerbRequestedError))
            {
                stdout.WriteLine(CommandLine.Text.HelpText.AutoBuild(parsed, h => h, e => e));
                return ExitCodes.Ok;
            }
            var first = notParsed.Errors.First();
            stderr.WriteLine("gsupervisor: " + (first is UnknownOptionError u ? $"unknown option '--{u.Token}' for {args[0]}; run gsupervisor {args[0]} --help" : $"invalid {args[0]} command line ({first.Tag})"));
            return ExitCodes.Usage;
        }
        var options = (ControlOptions)((Parsed<object>)parsed).Value;
        var path = options.Control ?? Os.ControlServer.DefaultPath();
        var timeout = TimeSpan.FromSeconds(10);
        string request;
        switch (options)
        {
            case StatusOptions s:
                request = s.Json ? "status json" : "status";
                break;
            case ReloadOptions r:
                if (!TryTimeout(r.Timeout, stderr, out var wait)) return ExitCodes.Usage;
                var command = r.Command.ToList();
                if (command.Count > 0 && command[0].Length == 0)
                {
                    stderr.WriteLine("gsupervisor: reload: the command after -- is an empty string");
                    return ExitCodes.Usage;
                }
                request = new ReloadRequest(r.Wait, command.Count > 0 ? command : null).Encode();
                if (r.Wait) timeout = wait;
                break;
            case UpgradeOptions u:
                if (!TryTimeout(u.Timeout, stderr, out var upgradeWait)) return ExitCodes.Usage;
                if (u.All) return UpgradeAll(u.Control, upgradeWait, stdout, stderr);
                request = u.Wait ? "upgrade wait" : "upgrade";
                if (u.Wait) timeout = upgradeWait;
                break;
            case PromoteOptions:
                request = "promote";
                break;
            case RollbackOptions:
                request = "rollback";
                break;
            case StopOptions { All: true } s:
                return TryTimeout(s.Timeout, stderr, out var stopWait) ? StopAll(s.Control, stopWait, stdout, stderr) : ExitCodes.Usage;
            default:
                request = "stop";
                break;
        }
        return Ask(path, request, timeout, stdout, stderr);
    }

    /// <summary>The first option of the daemon's own command line given to `reload` before "--": none of them changes on a reload.</summary>
    private static string? RestartOnlyOption(string[] args)
    {
        var runOptions = typeof(RunOptions).GetProperties()
            .Select(p => p.GetCustomAttributes(typeof(OptionAttribute), false).OfType<OptionAttribute>().FirstOrDefault()?.LongName)
            .Where(name => name is not null && name != "control").ToHashSet();
        foreach (var arg in args.Skip(1).TakeWhile(a => a != "--"))
            if (arg.StartsWith("--", StringComparison.Ordinal) && arg[2..].Split('=')[0] is var name && runOptions.Contains(name))
                return name;
        return null;
    }

    private static bool TryTimeout(string text, TextWriter stderr, out TimeSpan timeout)
    {
        if (Duration.TryParse(text, out timeout, out var error)) return true;
        stderr.WriteLine($"gsupervisor: --timeout: {error}");
        return false;
    }

    /// <summary>Sends one request and prints the answer; the exit code says how it went (see the overview).</summary>
    /// <param name="daemonPid">With --all: the daemon found in /proc, which is believed whatever its uid (a daemon of a unit's User=).</param>
    private static int Ask(string path, string request, TimeSpan timeout, TextWriter stdout, TextWriter stderr, string? who = null, int? daemonPid = null)
    {
        var prefix = who is null ? "gsupervisor: " : $"gsupervisor: {who}: ";

        string reply;
        try
        {
            reply = Exchange(path, request, timeout, daemonPid);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
        {
            stderr.WriteLine($"{prefix}no answer from {path} within {Duration.Format(timeout)}; the {request.Split(' ')[0]} may still finish (see gsupervisor status)");
            return TimedOut;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.AddressNotAvailable or SocketError.ConnectionRefused or SocketError.AddressFamilyNotSupported)
        {
            stderr.WriteLine($"{prefix}no gsupervisor is running with control socket {path} ({e.Message}); start one, or give --control PATH");
            return ExitCodes.Unavailable;
        }
        catch (UntrustedServerException e)
        {
            stderr.WriteLine($"{prefix}{e.Message}");
            return ExitCodes.NoPermission;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AccessDenied)
        {
            stderr.WriteLine($"{prefix}permission denied on control socket {path}; run as the daemon's user or root");
            return ExitCodes.NoPermission;
        }
        catch (SocketException e)
        {
            stderr.WriteLine($"{prefix}cannot reach control socket {path}: {e.Message}; is it a gsupervisor control socket?");
            return ExitCodes.Unavailable;
        }

        if (reply.StartsWith("ERR permission", StringComparison.Ordinal))
        {
            stderr.WriteLine($"{prefix}{reply.TrimEnd()["ERR ".Length..]}");
            return ExitCodes.NoPermission;
        }
        if (reply.StartsWith("REFUSED ", StringComparison.Ordinal))
        {
            var parts = reply["REFUSED ".Length..].Split(' ', 2);
            stderr.Write($"{prefix}reload refused: {(parts.Length > 1 ? parts[1] : reply)}" + (reply.EndsWith('\n') ? "" : "\n"));
            return int.TryParse(parts[0], out var code) && code > 1 ? code : ReloadFailed;
        }
        if (reply.StartsWith("FAILED ", StringComparison.Ordinal))
        {
            stderr.Write(prefix + (request.StartsWith("reload", StringComparison.Ordinal) ? "reload failed: " : "") + reply["FAILED ".Length..]);
            return ReloadFailed;
        }
        if (reply.StartsWith("ERR ", StringComparison.Ordinal) || reply.Length == 0)
        {
            stderr.WriteLine($"{prefix}{path} did not answer as gsupervisor does ({(reply.Length == 0 ? "empty reply" : reply.TrimEnd())})");
            return ExitCodes.Unavailable;
        }
        stdout.Write((who is null ? "" : who + ": ") + (reply.StartsWith("OK ", StringComparison.Ordinal) ? reply[3..] : reply));
        return ExitCodes.Ok;
    }

    /// <summary>`upgrade --all`: every daemon of this binary, one after the other, each waited for.</summary>
    private static int UpgradeAll(string? control, TimeSpan timeout, TextWriter stdout, TextWriter stderr)
    {
        if (control is not null)
        {
            stderr.WriteLine("gsupervisor: --all and --control conflict: --all finds each daemon's control socket itself");
            return ExitCodes.Usage;
        }
        var executable = Os.Installation.Executable;
        var daemons = Os.RunningSupervisors.Of(executable);
        if (daemons.Count == 0)
        {
            stdout.WriteLine($"no running gsupervisor daemon of {executable} to upgrade");
            return ExitCodes.Ok;
        }
        var worst = ExitCodes.Ok;
        foreach (var daemon in daemons)
        {
            var code = Ask(daemon.ControlPath, "upgrade wait", timeout, stdout, stderr, daemon.Label, daemon.Pid);
            if (code != ExitCodes.Ok && worst == ExitCodes.Ok) worst = code;
        }
        return worst;
    }

    /// <summary>`stop --all`: asks every daemon of this binary to stop, then waits until all have exited.</summary>
    private static int StopAll(string? control, TimeSpan timeout, TextWriter stdout, TextWriter stderr)
    {
        if (control is not null)
        {
            stderr.WriteLine("gsupervisor: --all and --control conflict: --all finds each daemon's control socket itself");
            return ExitCodes.Usage;
        }
        var daemons = Os.RunningSupervisors.Of(Os.Installation.Executable);
        var worst = ExitCodes.Ok;
        foreach (var daemon in daemons)
        {
            var code = Ask(daemon.ControlPath, "stop", TimeSpan.FromSeconds(10), stdout, stderr, daemon.Label, daemon.Pid);
            if (code != ExitCodes.Ok && worst == ExitCodes.Ok) worst = code;
        }
        var deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        foreach (var daemon in daemons)
        {
            while (Os.RunningSupervisors.IsRunning(daemon.Pid))
            {
                if (Environment.TickCount64 > deadline)
                {
                    stderr.WriteLine($"gsupervisor: {daemon.Label} has not exited within {Duration.Format(timeout)}");
                    return TimedOut;
                }
                Thread.Sleep(50); // no notification for another process's exit: poll, bounded by the deadline above
            }
        }
        return worst;
    }

    private static string Exchange(string path, string request, TimeSpan timeout, int? daemonPid)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.ReceiveTimeout = (int)Math.Min(int.MaxValue, timeout.TotalMilliseconds);
        socket.Connect(new UnixDomainSocketEndPoint(path));
        // Believe only a daemon of our own user or root: anyone who can make a socket at the path could answer
        // "reload succeeded" (and systemd's ExecReload= would report a reload that never happened).
        var ourUid = (int)Mono.Unix.Native.Syscall.geteuid();
        if (!Os.Libc.TryGetPeerCredentials((int)socket.Handle, out var serverPid, out var serverUid, out _))
            throw new UntrustedServerException($"cannot read the credentials of the server of {path}");
        if (!Os.PeerRule.Trusted(serverUid, ourUid) && serverPid != daemonPid)
            throw new UntrustedServerException(
                $"refusing {path}: its server (pid {serverPid}) runs as uid {serverUid}, not you or root (uid {ourUid}); it is not your gsupervisor");
        socket.Send(Encoding.UTF8.GetBytes(request + "\n"));
        var reply = new StringBuilder();
        var buffer = new byte[4096];
        int n;
        while ((n = socket.Receive(buffer)) > 0) reply.Append(Encoding.UTF8.GetString(buffer, 0, n));
        return reply.ToString();
    }
}

/// <summary>The control socket's server is not the caller's user or root, or its credentials cannot be read.</summary>
internal sealed class UntrustedServerException(string message) : Exception(message);
