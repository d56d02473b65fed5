// Overview
// --------
// Every process the bench starts is a Child: its stdout and stderr lines are kept with the time each
// arrived (Stopwatch ticks, i.e. CLOCK_MONOTONIC on Linux, the clock the wrk script stamps its buckets
// with) and copied to a log file, and the bench can wait for a line, signal the process and stop it.
// Every Child is registered, so StopAllAsync() in the bench's finally ends whatever is still running —
// after a failure or Ctrl+C too. Kill() takes the whole process tree, which reaches gsupervisor's children
// (each leads its own process group) and start_server's workers.

using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace CompareBench;

internal sealed partial class Child
{
    private static readonly List<Child> s_all = [];

    private readonly Process _process;
    private readonly List<(long At, string Text)> _lines = [];
    private readonly StreamWriter _log;
    private TaskCompletionSource _changed = NewSignal();
    private int _openStreams = 2;
    private bool _logClosed;

    private Child(string name, ProcessStartInfo info, string logPath)
    {
        Name = name;
        Directory.CreateDirectory(Path.GetDirectoryName(logPath)!);
        _log = new StreamWriter(logPath) { AutoFlush = true };
        _log.WriteLine($"$ {info.FileName} {string.Join(' ', info.ArgumentList)}");
        StartedAt = Stopwatch.GetTimestamp();
        _process = new Process { StartInfo = info, EnableRaisingEvents = true };
        _process.OutputDataReceived += (_, e) => OnLine(e.Data);
        _process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        _process.Exited += (_, _) => Pulse();
        try
        {
            _process.Start();
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            _log.Dispose();
            throw new BenchException($"cannot start {info.FileName}: {e.Message}");
        }
        _process.StandardInput.Close();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        lock (s_all) s_all.Add(this);
    }

    public string Name { get; }
    public int Pid => _process.Id;

    /// <summary>Stopwatch timestamp taken just before the process was started.</summary>
    public long StartedAt { get; }

    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;

    public int LineCount
    {
        get { lock (_lines) return _lines.Count; }
    }

    public string Output
    {
        get { lock (_lines) return string.Join('\n', _lines.Select(l => l.Text)); }
    }

    public static Child Start(string name, string file, IEnumerable<string> arguments, string logPath,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var argument in arguments) info.ArgumentList.Add(argument);
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) info.Environment[key] = value;
        return new Child(name, info, logPath);
    }

    /// <summary>Waits for a line at index <paramref name="from"/> or later that matches; its index, time and match.</summary>
    public async Task<(int Index, long At, Match Match)> WaitForLineAsync(Regex pattern, int from, TimeSpan timeout, CancellationToken token)
    {
        var deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            Task changed;
            bool ended;
            lock (_lines)
            {
                for (var i = from; i < _lines.Count; i++)
                    if (pattern.Match(_lines[i].Text) is { Success: true } m) return (i, _lines[i].At, m);
                from = _lines.Count;
                changed = _changed.Task;
                ended = _openStreams == 0 && _process.HasExited;
            }
            if (ended)
                throw new BenchException($"{Name} exited (status {_process.ExitCode}) before printing a line like /{pattern}/:\n{Tail()}");
            var left = deadline - Stopwatch.GetTimestamp();
            if (left <= 0)
                throw new BenchException($"{Name} printed no line like /{pattern}/ within {timeout.TotalSeconds:F0} s:\n{Tail()}");
            try
            {
                await changed.WaitAsync(TimeSpan.FromSeconds((double)left / Stopwatch.Frequency), token);
            }
            catch (TimeoutException)
            {
                // the loop reports it with the output
            }
        }
    }

    public Task<(int Index, long At, Match Match)> WaitForLineAsync(string pattern, int from, TimeSpan timeout, CancellationToken token) =>
        WaitForLineAsync(new Regex(pattern), from, timeout, token);

    /// <summary>
    /// Waits until the process has exited and its output has been read to the end; the time it was seen
    /// gone, or null at the deadline.
    /// </summary>
    public async Task<long?> WaitForExitAsync(TimeSpan timeout, CancellationToken token)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(token);
        deadline.CancelAfter(timeout);
        try
        {
            await _process.WaitForExitAsync(deadline.Token);
            var gone = Stopwatch.GetTimestamp();
            while (true)
            {
                Task changed;
                lock (_lines)
                {
                    if (_openStreams == 0) return gone;
                    changed = _changed.Task;
                }
                await changed.WaitAsync(deadline.Token);
            }
        }
        catch (OperationCanceledException) when (!token.IsCancellationRequested)
        {
            return null;
        }
    }

    public void Signal(int signal)
    {
        if (!_process.HasExited && Libc.Kill(_process.Id, signal) != 0)
            throw new BenchException($"kill({_process.Id}, {signal}) failed: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>Sends <paramref name="signal"/>, waits up to <paramref name="grace"/>, then kills the whole tree.</summary>
    public async Task StopAsync(TimeSpan grace, int signal = Libc.SIGTERM)
    {
        if (_process.HasExited) return;
        try
        {
            Signal(signal);
        }
        catch (BenchException)
        {
            // gone meanwhile
        }
        if (await WaitForExitAsync(grace, CancellationToken.None) is null)
        {
            Console.Error.WriteLine($"  {Name} (pid {Pid}) did not stop within {grace.TotalSeconds:F0} s; killing it");
            Kill();
        }
    }

    public void Kill()
    {
        try
        {
            if (!_process.HasExited) _process.Kill(entireProcessTree: true);
            _process.WaitForExit(5000);
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // already gone
        }
    }

    /// <summary>Stops every Child still running (in parallel), killing those that do not stop in time.</summary>
    public static async Task StopAllAsync(TimeSpan grace)
    {
        Child[] running;
        lock (s_all) running = s_all.Where(c => !c.HasExited).ToArray();
        await Task.WhenAll(running.Select(c => c.StopAsync(grace)));
        lock (s_all)
            foreach (var child in s_all)
                lock (child._lines)
                {
                    child._logClosed = true;
                    child._log.Dispose();
                }
    }

    public string Tail(int lines = 30)
    {
        lock (_lines) return string.Join('\n', _lines.TakeLast(lines).Select(l => "    " + l.Text));
    }

    private void OnLine(string? text)
    {
        var at = Stopwatch.GetTimestamp();
        lock (_lines)
        {
            if (text is null) _openStreams--;
            else
            {
                _lines.Add((at, text));
                if (!_logClosed) _log.WriteLine(text);
            }
        }
        Pulse();
    }

    private void Pulse()
    {
        TaskCompletionSource changed;
        lock (_lines)
        {
            changed = _changed;
            _changed = NewSignal();
        }
        changed.TrySetResult();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>A failure of the bench itself (not of a measured strategy): it stops the run.</summary>
internal sealed class BenchException(string message) : Exception(message);

/// <summary>The libc calls the bench needs, and /proc readings.</summary>
internal static partial class Libc
{
    public const int SIGHUP = 1, SIGINT = 2, SIGKILL = 9, SIGUSR2 = 12, SIGTERM = 15;
    private const int _SC_CLK_TCK = 2;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "sysconf")]
    private static partial long Sysconf(int name);

    public static long ClockTicksPerSecond { get; } = Sysconf(_SC_CLK_TCK);

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "clock_gettime", SetLastError = true)]
    private static partial int ClockGettime(int clock, out Timespec time);

    /// <summary>
    /// The bench places reloads on timeline.lua's axis by Stopwatch timestamps; that holds only while
    /// Stopwatch reads CLOCK_MONOTONIC in nanoseconds, as it does on Linux. Checked, not assumed.
    /// </summary>
    public static void CheckStopwatchIsMonotonicClock()
    {
        const int CLOCK_MONOTONIC = 1;
        if (ClockGettime(CLOCK_MONOTONIC, out var now) != 0)
            throw new BenchException($"clock_gettime failed: errno {Marshal.GetLastPInvokeError()}");
        var stopwatch = Stopwatch.GetTimestamp();
        var monotonic = now.Seconds * 1_000_000_000 + now.Nanoseconds;
        if (Stopwatch.Frequency != 1_000_000_000 || Math.Abs(stopwatch - monotonic) > 10_000_000)
            throw new BenchException($"Stopwatch ({stopwatch} at {Stopwatch.Frequency}/s) is not CLOCK_MONOTONIC ({monotonic} ns); the timeline cannot be matched");
    }

    /// <summary>User plus system CPU time of a live process, in seconds (/proc/PID/stat).</summary>
    public static double CpuSeconds(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // after the command: field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12
        return (long.Parse(fields[11]) + long.Parse(fields[12])) / (double)ClockTicksPerSecond;
    }

    /// <summary>Resident set size of a live process in MiB, now (VmRSS) and at its peak (VmHWM).</summary>
    public static (double Now, double Peak) RssMiB(int pid)
    {
        double Read(string[] lines, string key) =>
            long.Parse(lines.First(l => l.StartsWith(key, StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;
        var status = File.ReadAllLines($"/proc/{pid}/status");
        return (Read(status, "VmRSS:"), Read(status, "VmHWM:"));
    }
}
