// Overview
// --------
// How light gsupervisor is, beside Server::Starter (a Perl script) and systemd's own activator:
//  - `--version`: the wall time of the whole process, the median of many runs (start_server --version beside it);
//  - the exec helper: what running a command through gsupervisor-exec adds to a bare posix_spawn of it, the
//    difference of the medians of many spawns of /bin/true each way;
//  - first answer: from starting the supervisor (or systemd-socket-activate) with the stock app to that app's
//    first HTTP answer, a client connecting at once and retrying until the port is bound; alternating
//    rounds, medians; what gsupervisor adds is the difference;
//  - RSS idle with one stock-app child, gsupervisor against start_server;
//  - installed size: the installed tree of `make deb` and the package file; Debian's Installed-Size of
//    libserver-starter-perl and perl-base beside it.
// Spawns here use posix_spawn and waitpid directly (not Process, whose pipes and threads would be timed too).

using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace CompareBench;

internal sealed record FootprintFigures(
    double VersionMs, double StarterVersionMs, int VersionRuns,
    double BareSpawnMs, double HelperSpawnMs, int SpawnRuns,
    double FirstAnswerMs, double InjectedFirstAnswerMs, double ActivatorFirstAnswerMs, int FirstAnswerRounds,
    double IdleRssMiB, double StarterIdleRssMiB,
    long InstalledKiB, long PackageKiB, long StarterInstalledKiB, long PerlBaseInstalledKiB)
{
    public double HelperCostMs => HelperSpawnMs - BareSpawnMs;
    /// <summary>What gsupervisor adds to an app's start (--no-inject, as systemd-socket-activate runs it).</summary>
    public double FirstAnswerExtraMs => FirstAnswerMs - ActivatorFirstAnswerMs;
    /// <summary>What the startup hook and the injected integration add to the app's start.</summary>
    public double HookCostMs => InjectedFirstAnswerMs - FirstAnswerMs;
}

internal static partial class Footprint
{
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(45);

    public static async Task<FootprintFigures> MeasureAsync(Paths paths, Action<string> say, CancellationToken token)
    {
        const int versionRuns = 100, spawnRuns = 500, rounds = 15;
        var version = Spawn.MedianMilliseconds([paths.GSupervisor, "--version"], versionRuns);
        var starterVersion = Spawn.MedianMilliseconds([Spawn.Which("start_server"), "--version"], versionRuns);
        say($"--version: gsupervisor {version:F1} ms, start_server {starterVersion:F1} ms (medians of {versionRuns})");

        var binary = new FileInfo(paths.GSupervisor).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? paths.GSupervisor;
        var helper = Path.Combine(Path.GetDirectoryName(binary)!, "gsupervisor-exec"); // installed beside the binary
        var self = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        double bare = 0, through = 0;
        string[] bareArgv = ["/bin/true"], helperArgv = [helper, "15", self, "0", "-", "/bin/true", "true"];
        // ABBA halves, so a drift in the machine's load falls on both alike.
        bare += Spawn.MedianMilliseconds(bareArgv, spawnRuns / 2) / 2;
        through += Spawn.MedianMilliseconds(helperArgv, spawnRuns / 2) / 2;
        through += Spawn.MedianMilliseconds(helperArgv, spawnRuns / 2) / 2;
        bare += Spawn.MedianMilliseconds(bareArgv, spawnRuns / 2) / 2;
        say($"exec helper: {through - bare:F2} ms per spawn ({through:F2} ms through gsupervisor-exec, {bare:F2} ms bare; medians)");

        // Three starts per round, in an order that rotates, so a drift in the machine's load falls on all alike:
        // gsupervisor (its startup hook injected, the default), gsupervisor --no-inject, systemd-socket-activate.
        var series = new (string Name, Func<int, Task<double>> Measure, List<double> Values)[]
        {
            ("injected", round => FirstAnswerUnderGSupervisorAsync(paths, round, inject: true, token), []),
            ("no-inject", round => FirstAnswerUnderGSupervisorAsync(paths, round, inject: false, token), []),
            ("activator", round => FirstAnswerUnderActivatorAsync(paths, round, token), []),
        };
        for (var round = 0; round < rounds; round++)
            for (var i = 0; i < series.Length; i++)
            {
                var (_, measure, values) = series[(round + i) % series.Length];
                values.Add(await measure(round));
            }
        var injected = Median(series[0].Values);
        var plain = Median(series[1].Values);
        var activator = Median(series[2].Values);
        say($"first answer of the stock app: {injected:F0} ms under gsupervisor (startup hook injected), {plain:F0} ms with --no-inject, " +
            $"{activator:F0} ms under systemd-socket-activate (medians of {rounds})");

        var (rss, starterRss) = await IdleRssAsync(paths, token);
        say($"idle RSS with one stock-app child: gsupervisor {rss:F1} MiB, start_server {starterRss:F1} MiB");

        var installed = DiskKiB(paths.InstalledTree);
        var package = new FileInfo(paths.Package).Length / 1024;
        var starterSize = InstalledSize("libserver-starter-perl");
        var perlSize = InstalledSize("perl-base");
        say($"installed: {installed} KiB ({package} KiB package); libserver-starter-perl {starterSize} KiB + perl-base {perlSize} KiB");
        return new FootprintFigures(version, starterVersion, versionRuns, bare, through, spawnRuns, plain, injected, activator, rounds,
            rss, starterRss, installed, package, starterSize, perlSize);
    }

    private static async Task<double> FirstAnswerUnderGSupervisorAsync(Paths paths, int round, bool inject, CancellationToken token)
    {
        var port = Net.FreePort();
        var name = inject ? "injected" : "no-inject";
        var supervisor = Child.Start("gsupervisor", paths.GSupervisor,
            [.. paths.Control($"first-answer-{name}-{round}"), "--listen", $"127.0.0.1:{port}", .. inject ? Array.Empty<string>() : ["--no-inject"],
                "--ready", "delay:1s", "--", paths.StockKestrel],
            paths.Log($"first-answer-gsupervisor-{name}-{round}"));
        try
        {
            return await FirstAnswerAsync(port, supervisor, token);
        }
        finally
        {
            await supervisor.StopAsync(StopGrace);
        }
    }

    private static async Task<double> FirstAnswerUnderActivatorAsync(Paths paths, int round, CancellationToken token)
    {
        var port = Net.FreePort();
        // Without --accept it execs the app on the first connection, handing it the listening socket (LISTEN_FDS).
        var activator = Child.Start("systemd-socket-activate", Spawn.Which("systemd-socket-activate"),
            ["--listen", $"127.0.0.1:{port}", paths.StockKestrel], paths.Log($"first-answer-activator-{round}"));
        try
        {
            return await FirstAnswerAsync(port, activator, token);
        }
        finally
        {
            await activator.StopAsync(StopGrace);
        }
    }

    /// <summary>Milliseconds from the process's start to the first answer on <paramref name="port"/>, connecting as soon as anything listens.</summary>
    private static async Task<double> FirstAnswerAsync(int port, Child process, CancellationToken token)
    {
        var request = Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < StepTimeout)
        {
            token.ThrowIfCancellationRequested();
            if (process.HasExited) throw new BenchException($"{process.Name} exited before answering:\n{process.Tail()}");
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await socket.ConnectAsync("127.0.0.1", port, token);
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
            {
                await Task.Delay(1, token); // nothing listens yet: the bind comes within milliseconds
                continue;
            }
            await socket.SendAsync(request, token);
            var buffer = new byte[1024];
            var n = await socket.ReceiveAsync(buffer, token); // the app is starting: this waits in the accept queue
            if (n > 0 && Encoding.ASCII.GetString(buffer, 0, n).StartsWith("HTTP/1.1 200", StringComparison.Ordinal))
                return ReloadTiming.Milliseconds(Stopwatch.GetTimestamp() - process.StartedAt);
            throw new BenchException($"{process.Name}: unexpected first answer '{Encoding.ASCII.GetString(buffer, 0, n)}'");
        }
        throw new BenchException($"{process.Name} did not answer within {StepTimeout.TotalSeconds} s:\n{process.Tail()}");
    }

    private static async Task<(double GSupervisor, double ServerStarter)> IdleRssAsync(Paths paths, CancellationToken token)
    {
        var settle = TimeSpan.FromSeconds(3); // after the child answers, part of the figure's definition
        var supervisor = Child.Start("gsupervisor", paths.GSupervisor,
            [.. paths.Control("idle-rss"), "--listen", "127.0.0.1:0", "--ready", "delay:1s", "--", paths.StockKestrel], paths.Log("idle-rss-gsupervisor"));
        double rss;
        try
        {
            await supervisor.WaitForLineAsync(@"generation 1 \(pid \d+\) is ready", 0, StepTimeout, token);
            await Task.Delay(settle, token);
            rss = Libc.RssMiB(supervisor.Pid).Now;
        }
        finally
        {
            await supervisor.StopAsync(StopGrace);
        }

        var port = Net.FreePort();
        var starter = Child.Start("start_server", "start_server", [$"--port=127.0.0.1:{port}", "--", paths.StockKestrel], paths.Log("idle-rss-start_server"));
        try
        {
            var worker = await starter.WaitForLineAsync(@"starting new worker (\d+)", 0, StepTimeout, token);
            await Net.PollUntilAnswersAsync(port, int.Parse(worker.Match.Groups[1].Value, CultureInfo.InvariantCulture), starter, token);
            await Task.Delay(settle, token);
            return (rss, Libc.RssMiB(starter.Pid).Now);
        }
        finally
        {
            await starter.StopAsync(StopGrace);
        }
    }

    private static long DiskKiB(string directory)
    {
        var output = Spawn.Output("du", "-sk", directory);
        return long.Parse(output.Split('\t')[0], CultureInfo.InvariantCulture);
    }

    /// <summary>Debian's Installed-Size of a package, in KiB.</summary>
    private static long InstalledSize(string package) =>
        long.Parse(Spawn.Output("dpkg-query", "-W", "-f=${Installed-Size}", package).Trim(), CultureInfo.InvariantCulture);

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}

/// <summary>Timed spawns with posix_spawn and waitpid: stdout and stderr to /dev/null, the bench's environment.</summary>
internal static unsafe partial class Spawn
{
    private const int O_WRONLY = 1;

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_init")]
    private static partial int FileActionsInit(void* actions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_addopen", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int FileActionsAddOpen(void* actions, int fd, string path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_destroy")]
    private static partial int FileActionsDestroy(void* actions);

    [LibraryImport("libc", EntryPoint = "posix_spawn")]
    private static partial int PosixSpawn(out int pid, byte* path, void* actions, void* attr, byte** argv, byte** envp);

    [LibraryImport("libc", EntryPoint = "waitpid", SetLastError = true)]
    private static partial int WaitPid(int pid, out int status, int options);

    /// <summary>The median wall time, in milliseconds, of <paramref name="runs"/> runs of <paramref name="argv"/> to its exit (after one unmeasured run).</summary>
    public static double MedianMilliseconds(string[] argv, int runs)
    {
        var environment = Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>().Select(e => $"{e.Key}={e.Value}").ToArray();
        var nativeArgv = ToNative(argv);
        var nativeEnv = ToNative(environment);
        var path = ToNative([argv[0]])[0];
        var actions = stackalloc byte[512];
        FileActionsInit(actions);
        FileActionsAddOpen(actions, 1, "/dev/null", O_WRONLY, 0);
        FileActionsAddOpen(actions, 2, "/dev/null", O_WRONLY, 0);
        try
        {
            var samples = new double[runs];
            for (var i = -1; i < runs; i++)
            {
                var start = Stopwatch.GetTimestamp();
                var rc = PosixSpawn(out var pid, path, actions, null, nativeArgv, nativeEnv);
                if (rc != 0) throw new BenchException($"cannot run {argv[0]}: posix_spawn error {rc}");
                int status;
                while (WaitPid(pid, out status, 0) < 0)
                    if (Marshal.GetLastPInvokeError() != 4 /* EINTR */) throw new BenchException($"waitpid {pid}: errno {Marshal.GetLastPInvokeError()}");
                if (status != 0) throw new BenchException($"{string.Join(' ', argv)} failed (wait status {status}): a failing run would time as a fast one");
                if (i >= 0) samples[i] = ReloadTiming.Milliseconds(Stopwatch.GetTimestamp() - start);
            }
            Array.Sort(samples);
            return samples[runs / 2];
        }
        finally
        {
            FileActionsDestroy(actions);
        }
    }

    /// <summary>Strings in native memory, NULL-terminated; the bench keeps them for its life (a handful).</summary>
    private static byte** ToNative(string[] values)
    {
        var array = (byte**)NativeMemory.AllocZeroed((nuint)values.Length + 1, (nuint)sizeof(nint));
        for (var i = 0; i < values.Length; i++) array[i] = (byte*)Marshal.StringToCoTaskMemUTF8(values[i]);
        return array;
    }

    public static string Which(string command) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, command)).FirstOrDefault(File.Exists)
        ?? throw new BenchException($"{command} is not on PATH (bench/install-deps.sh installs it)");

    public static string Output(string program, params string[] arguments)
    {
        var info = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        using var process = Process.Start(info) ?? throw new BenchException($"cannot run {program}");
        var output = process.StandardOutput.ReadToEnd();
        var error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0) throw new BenchException($"{program} {string.Join(' ', arguments)}: {error.Trim()}");
        return output;
    }
}
