// Overview
// --------
// The verbs `gsupervisor status | reload | stop`: thin clients of the daemon's control socket. Each sends one
// request line and prints the reply, from a server of the caller's own user or root only (SO_PEERCRED). Exit
// codes: 0 done; 1 the reload failed (rolled back); 64 usage; 69 no daemon answers on the socket; 75 timed
// out waiting; 77 permission denied, or the server is another user's.

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

[Verb("reload", HelpText = "Ask the daemon to reload (as SIGUSR2).")]
internal sealed class ReloadOptions : ControlOptions
{
    [Option("wait", HelpText = "Return only when the reload finished: exit 0 if the new generation serves, 1 with the reason if it was rolled back.")]
    public bool Wait { get; set; }

    [Option("timeout", Default = "5m", HelpText = "With --wait: give up after this long (exit 75).")]
    public string Timeout { get; set; } = "5m";
}

[Verb("stop", HelpText = "Ask the daemon to stop its children and exit (as SIGTERM).")]
internal sealed class StopOptions : ControlOptions;

internal static class ControlClient
{
    public const int ReloadFailed = 1;
    public const int TimedOut = 75;

    public static readonly string[] Verbs = ["status", "reload", "stop"];

    // CommandLineParser reads the verbs' attributes and sets their properties by reflection (see the csproj).
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(StatusOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(ReloadOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(StopOptions))]
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, typeof(ControlOptions))]
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        using var parser = new Parser(s => { s.HelpWriter = null; s.CaseSensitive = true; s.AutoHelp = true; });
        var parsed = parser.ParseArguments<StatusOptions, ReloadOptions, StopOptions>(args);
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
                if (!Duration.TryParse(r.Timeout, out var wait, out var error))
                {
                    stderr.WriteLine($"gsupervisor: --timeout: {error}");
                    return ExitCodes.Usage;
                }
                request = r.Wait ? "reload wait" : "reload";
                if (r.Wait) timeout = wait;
                break;
            default:
                request = "stop";
                break;
        }

        string reply;
        try
        {
            reply = Exchange(path, request, timeout);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
        {
            stderr.WriteLine($"gsupervisor: no answer from {path} within {Duration.Format(timeout)}; the reload may still finish (see gsupervisor status)");
            return TimedOut;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.AddressNotAvailable or SocketError.ConnectionRefused or SocketError.AddressFamilyNotSupported)
        {
            stderr.WriteLine($"gsupervisor: no gsupervisor is running with control socket {path} ({e.Message}); start one, or give --control PATH");
            return ExitCodes.Unavailable;
        }
        catch (UntrustedServerException e)
        {
            stderr.WriteLine($"gsupervisor: {e.Message}");
            return ExitCodes.NoPermission;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AccessDenied)
        {
            stderr.WriteLine($"gsupervisor: permission denied on control socket {path}; run as the daemon's user or root");
            return ExitCodes.NoPermission;
        }
        catch (SocketException e)
        {
            stderr.WriteLine($"gsupervisor: cannot reach control socket {path}: {e.Message}; is it a gsupervisor control socket?");
            return ExitCodes.Unavailable;
        }

        if (reply.StartsWith("ERR permission", StringComparison.Ordinal))
        {
            stderr.WriteLine($"gsupervisor: {reply.TrimEnd()["ERR ".Length..]}");
            return ExitCodes.NoPermission;
        }
        if (reply.StartsWith("FAILED ", StringComparison.Ordinal))
        {
            stderr.Write("gsupervisor: reload failed: " + reply["FAILED ".Length..]);
            return ReloadFailed;
        }
        if (reply.StartsWith("ERR ", StringComparison.Ordinal) || reply.Length == 0)
        {
            stderr.WriteLine($"gsupervisor: {path} did not answer as gsupervisor does ({(reply.Length == 0 ? "empty reply" : reply.TrimEnd())})");
            return ExitCodes.Unavailable;
        }
        stdout.Write(reply.StartsWith("OK ", StringComparison.Ordinal) ? reply[3..] : reply);
        return ExitCodes.Ok;
    }

    private static string Exchange(string path, string request, TimeSpan timeout)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.ReceiveTimeout = (int)Math.Min(int.MaxValue, timeout.TotalMilliseconds);
        socket.Connect(new UnixDomainSocketEndPoint(path));
        // Believe only a daemon of our own user or root: anyone who can make a socket at the path could answer
        // "reload succeeded" (and systemd's ExecReload= would report a reload that never happened).
        var ourUid = (int)Mono.Unix.Native.Syscall.geteuid();
        if (!Os.Libc.TryGetPeerCredentials((int)socket.Handle, out var serverPid, out var serverUid, out _))
            throw new UntrustedServerException($"cannot read the credentials of the server of {path}");
        if (!Os.PeerRule.Trusted(serverUid, ourUid))
            throw new UntrustedServerException(
                $"refusing {path}: its server (pid {serverPid}) runs as uid {serverUid}, not you or root (uid {ourUid}); it is not your gsupervisor");
        socket.Send(Encoding.ASCII.GetBytes(request + "\n"));
        var reply = new StringBuilder();
        var buffer = new byte[4096];
        int n;
        while ((n = socket.Receive(buffer)) > 0) reply.Append(Encoding.UTF8.GetString(buffer, 0, n));
        return reply.ToString();
    }
}

/// <summary>The control socket's server is not the caller's user or root, or its credentials cannot be read.</summary>
internal sealed class UntrustedServerException(string message) : Exception(message);
