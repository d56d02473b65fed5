// Overview
// --------
// The six ways of replacing a running server that the bench compares. Each starts its server, performs
// one reload on request and says when the new process served and when the old one was gone, and stops.
//
//   gsupervisor + HelloKestrel   gsupervisor --ready notify; SIGUSR2. The app drains (Connection: close) 2 s.
//   gsupervisor + stock Kestrel, injected
//                                gsupervisor --ready notify; SIGUSR2. The unmodified app gets READY=1 and the
//                                drain from gsupervisor's startup hook.
//   gsupervisor + stock Kestrel  gsupervisor --no-inject --ready delay:2s; SIGUSR2. The app adopts LISTEN_FDS
//                                (UseSystemd) and neither reports readiness nor drains.
//   Server::Starter              start_server --interval=2; SIGHUP. The app adopts SERVER_STARTER_PORT's fd.
//   restart                      SIGTERM the app, wait until it is gone, start it again, poll until it answers
//                                (what systemctl restart, or a stop-then-start deploy script, does).
//   SO_REUSEPORT overlap         start a second copy on its own SO_REUSEPORT socket, poll until it answers,
//                                then SIGTERM the old one and wait until it is gone.
//
// gsupervisor and start_server wait a fixed 2 s for a stock child (neither can know when it is ready);
// the two scripted strategies poll like a careful deploy script. Times are Stopwatch timestamps.

using System.Diagnostics;
using System.Globalization;

namespace CompareBench;

/// <summary>When a reload was requested, when the new process served, and when the old one was gone.</summary>
internal sealed record ReloadTiming(long RequestedAt, long NewServingAt, long OldGoneAt)
{
    public long CompleteAt => Math.Max(NewServingAt, OldGoneAt);
    public double OldGoneMs => Milliseconds(OldGoneAt - RequestedAt);
    public double NewServingMs => Milliseconds(NewServingAt - RequestedAt);

    public static double Milliseconds(long ticks) => ticks * 1000.0 / Stopwatch.Frequency;
}

internal abstract class Strategy(Paths paths)
{
    /// <summary>How long a stock child is given to get ready where nothing can tell (gsupervisor's --ready delay, start_server's --interval).</summary>
    public const int ReadyDelaySeconds = 2;

    public static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(60);
    protected static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(45);

    protected Paths Paths { get; } = paths;
    public abstract string Key { get; }
    public abstract string Label { get; }
    /// <summary>How it is run, for latest.md (PORT stands for the port picked at run time).</summary>
    public abstract string Command { get; }
    public abstract string ReloadHow { get; }
    public int Port { get; protected set; }
    public string RunName { get; set; } = "";

    /// <summary>The supervising process whose RSS and CPU are reported, if there is one.</summary>
    public virtual Child? Supervisor => null;

    public abstract Task StartAsync(CancellationToken token);
    public abstract Task<ReloadTiming> ReloadAsync(int reload, CancellationToken token);
    public abstract Task StopAsync();
}

/// <summary>Which app gsupervisor runs, and how it learns of readiness and drains.</summary>
internal enum GSupervisorChild
{
    /// <summary>examples/HelloKestrel: the GSupervisor.AspNetCore package, one line; --ready notify.</summary>
    HelloKestrel,
    /// <summary>The stock app, reached by gsupervisor's startup hook (the default): READY=1 and the drain come injected.</summary>
    StockInjected,
    /// <summary>The stock app with --no-inject: Kestrel's UseSystemd() adopts fd 3, no drain; --ready delay.</summary>
    StockPlain,
}

/// <summary>gsupervisor with a child: HelloKestrel, the stock app injected, or the stock app with --no-inject.</summary>
internal sealed class GSupervisorStrategy(Paths paths, GSupervisorChild child) : Strategy(paths)
{
    private Child? _supervisor;

    public override string Key => child switch
    {
        GSupervisorChild.HelloKestrel => "gsupervisor-hello",
        GSupervisorChild.StockInjected => "gsupervisor-stock-injected",
        _ => "gsupervisor-stock",
    };

    public override string Label => child switch
    {
        GSupervisorChild.HelloKestrel => "gsupervisor + HelloKestrel (drain on)",
        GSupervisorChild.StockInjected => "gsupervisor + stock Kestrel, injected",
        _ => "gsupervisor + stock Kestrel",
    };

    public override string ReloadHow => "`kill -USR2` to gsupervisor";
    public override Child? Supervisor => _supervisor;

    private string[] Options => child switch
    {
        GSupervisorChild.StockPlain => ["--no-inject", "--ready", $"delay:{ReadyDelaySeconds}s"],
        _ => ["--ready", "notify"],
    };

    private string App => child == GSupervisorChild.HelloKestrel ? Paths.HelloKestrel : Paths.StockKestrel;

    public override string Command =>
        $"`gsupervisor --control PATH --listen 127.0.0.1:0 {string.Join(' ', Options)} --stop-timeout 30s -- {Path.GetRelativePath(Paths.Root, App)}`";

    public override async Task StartAsync(CancellationToken token)
    {
        _supervisor = Child.Start("gsupervisor", Paths.GSupervisor,
            [.. Paths.Control(RunName), "--listen", "127.0.0.1:0", .. Options, "--stop-timeout", "30s", "--", App], Paths.Log(RunName + "-gsupervisor"));
        var listening = await _supervisor.WaitForLineAsync(@"listening on 127\.0\.0\.1:(\d+)", 0, StepTimeout, token);
        Port = int.Parse(listening.Match.Groups[1].Value, CultureInfo.InvariantCulture);
        await _supervisor.WaitForLineAsync(@"generation 1 \(pid \d+\) is ready", 0, StepTimeout, token);
    }

    public override async Task<ReloadTiming> ReloadAsync(int reload, CancellationToken token)
    {
        var supervisor = _supervisor!;
        var generation = reload + 1;
        var from = supervisor.LineCount;
        var requested = Stopwatch.GetTimestamp();
        supervisor.Signal(Libc.SIGUSR2);
        var outcome = await supervisor.WaitForLineAsync($@"reload (succeeded|failed): generation {generation}\b|reload failed", from, StepTimeout, token);
        if (outcome.Match.Groups[1].Value != "succeeded")
            throw new BenchException($"gsupervisor reload {reload} failed:\n{supervisor.Tail()}");
        var gone = await supervisor.WaitForLineAsync($@"generation {generation - 1} \(pid \d+\) exited", from, StepTimeout, token);
        return new ReloadTiming(requested, outcome.At, gone.At);
    }

    public override Task StopAsync() => _supervisor?.StopAsync(StopGrace) ?? Task.CompletedTask;
}

/// <summary>Server::Starter (Debian's libserver-starter-perl) with the stock app; SIGHUP reloads.</summary>
internal sealed class ServerStarterStrategy(Paths paths) : Strategy(paths)
{
    private Child? _starter;

    public override string Key => "server-starter";
    public override string Label => "Server::Starter + stock Kestrel";
    public override string ReloadHow => "`kill -HUP` to start_server";
    public override Child? Supervisor => _starter;

    private static string[] Options(int port) =>
        [$"--port=127.0.0.1:{port}", $"--interval={ReadyDelaySeconds}", "--signal-on-hup=TERM", "--signal-on-term=TERM"];

    public override string Command =>
        $"`start_server {string.Join(' ', Options(0)).Replace(":0", ":PORT", StringComparison.Ordinal)} -- {Path.GetRelativePath(Paths.Root, Paths.StockKestrel)}`";

    public override async Task StartAsync(CancellationToken token)
    {
        for (var attempt = 1; ; attempt++)
        {
            Port = Net.FreePort();
            _starter = Child.Start("start_server", "start_server", [.. Options(Port), "--", Paths.StockKestrel],
                Paths.Log($"{RunName}-start_server-{attempt}"));
            var worker = await _starter.WaitForLineAsync(@"starting new worker (\d+)|failed to bind", 0, StepTimeout, token);
            if (worker.Match.Groups[1].Success)
            {
                await Net.PollUntilAnswersAsync(Port, int.Parse(worker.Match.Groups[1].Value, CultureInfo.InvariantCulture), _starter, token);
                return;
            }
            await _starter.StopAsync(StopGrace);
            if (attempt == 3) throw new BenchException("start_server could not bind a free port:\n" + _starter.Tail());
        }
    }

    public override async Task<ReloadTiming> ReloadAsync(int reload, CancellationToken token)
    {
        var starter = _starter!;
        var from = starter.LineCount;
        var requested = Stopwatch.GetTimestamp();
        starter.Signal(Libc.SIGHUP);
        var switched = await starter.WaitForLineAsync(@"new worker is now running, sending TERM to old workers:(\d+)", from, StepTimeout, token);
        var old = switched.Match.Groups[1].Value;
        var gone = await starter.WaitForLineAsync($@"old worker {old} died", from, StepTimeout, token);
        return new ReloadTiming(requested, switched.At, gone.At);
    }

    public override Task StopAsync() => _starter?.StopAsync(StopGrace) ?? Task.CompletedTask;
}

/// <summary>The stock app run by the bench itself: restart (stop, then start) or SO_REUSEPORT overlap.</summary>
internal sealed class ScriptedStrategy(Paths paths, bool reusePort) : Strategy(paths)
{
    private Child? _current;
    private int _started;

    public override string Key => reusePort ? "reuseport" : "restart";
    public override string Label => reusePort ? "SO_REUSEPORT overlap + stock Kestrel" : "restart (stop, then start) + stock Kestrel";
    public override string ReloadHow => reusePort
        ? "start a second copy, poll until it answers, then `kill -TERM` the old one and wait until it is gone"
        : "`kill -TERM` the app, wait until it is gone, start it again, poll until it answers";

    private string[] Arguments(int port) => reusePort ? ["--bind", $"127.0.0.1:{port}", "--reuseport"] : ["--bind", $"127.0.0.1:{port}"];

    public override string Command =>
        $"`{Path.GetRelativePath(Paths.Root, Paths.StockKestrel)} {string.Join(' ', Arguments(0)).Replace(":0", ":PORT", StringComparison.Ordinal)}` (no supervisor)";

    private Child Launch() =>
        Child.Start("stock Kestrel", Paths.StockKestrel, Arguments(Port), Paths.Log($"{RunName}-stock-{++_started}"));

    public override async Task StartAsync(CancellationToken token)
    {
        Port = Net.FreePort();
        _current = Launch();
        await Net.PollUntilAnswersAsync(Port, _current.Pid, _current, token);
    }

    public override async Task<ReloadTiming> ReloadAsync(int reload, CancellationToken token)
    {
        var old = _current!;
        var requested = Stopwatch.GetTimestamp();
        long gone, serving;
        if (reusePort)
        {
            _current = Launch();
            serving = await Net.PollUntilAnswersAsync(Port, _current.Pid, _current, token);
            old.Signal(Libc.SIGTERM);
            gone = await old.WaitForExitAsync(StepTimeout, token) ?? throw new BenchException($"pid {old.Pid} did not stop:\n{old.Tail()}");
        }
        else
        {
            old.Signal(Libc.SIGTERM);
            gone = await old.WaitForExitAsync(StepTimeout, token) ?? throw new BenchException($"pid {old.Pid} did not stop:\n{old.Tail()}");
            _current = Launch();
            serving = await Net.PollUntilAnswersAsync(Port, _current.Pid, _current, token);
        }
        return new ReloadTiming(requested, serving, gone);
    }

    public override Task StopAsync() => _current?.StopAsync(StopGrace) ?? Task.CompletedTask;
}
