// Overview
// --------
// The supervisor toward systemd, when systemd gave it a NOTIFY_SOCKET: READY=1 once the first generation is
// ready; RELOADING=1 with MONOTONIC_USEC= when a reload starts and READY=1 when it ends (success or rollback),
// as Type=notify-reload expects; STATUS= lines; STOPPING=1 on shutdown; WATCHDOG=1 every half
// WATCHDOG_USEC, sent from the event loop so that a stuck loop stops the pings. MAINPID stays the supervisor.
// The children get a NOTIFY_SOCKET of the supervisor's own, never this one.

using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace GSupervisor.Daemon.Os;

internal sealed class SystemdNotifier : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
    private readonly UnixDomainSocketEndPoint _endpoint;
    private readonly Action<string> _onError;

    private SystemdNotifier(string path, TimeSpan? watchdogInterval, Action<string> onError)
    {
        _endpoint = new UnixDomainSocketEndPoint(path.StartsWith('@') ? "\0" + path[1..] : path);
        _socket.Blocking = false; // a busy systemd must never stall the event loop: a message that would block is dropped
        WatchdogInterval = watchdogInterval;
        _onError = onError;
    }

    /// <summary>Half of WATCHDOG_USEC, when systemd asked this process for watchdog pings.</summary>
    public TimeSpan? WatchdogInterval { get; }

    /// <summary>The notifier for this process, or null when systemd (or anyone) gave it no NOTIFY_SOCKET.</summary>
    public static SystemdNotifier? FromEnvironment(Action<string> onError)
    {
        if (Environment.GetEnvironmentVariable("NOTIFY_SOCKET") is not { Length: > 0 } path) return null;
        if (Encoding.UTF8.GetByteCount(path) > Core.ListenSpec.MaxUnixPathBytes || !(path.StartsWith('/') || path.StartsWith('@')))
            throw new StartupException(ExitCodes.Usage, $"NOTIFY_SOCKET '{path}' is not a Unix socket address (absolute path or @name of at most 107 bytes)");
        TimeSpan? watchdog = null;
        var pidText = Environment.GetEnvironmentVariable("WATCHDOG_PID");
        if (long.TryParse(Environment.GetEnvironmentVariable("WATCHDOG_USEC"), NumberStyles.None, CultureInfo.InvariantCulture, out var usec) && usec > 0
            && (pidText is null || pidText == Environment.ProcessId.ToString(CultureInfo.InvariantCulture)))
            watchdog = TimeSpan.FromMicroseconds(usec / 2.0);
        return new SystemdNotifier(path, watchdog, onError);
    }

    /// <summary>CLOCK_MONOTONIC in microseconds, as systemd wants in MONOTONIC_USEC (Stopwatch reads that clock on Linux).</summary>
    public static long MonotonicMicroseconds() =>
        (long)(Stopwatch.GetTimestamp() * (1_000_000.0 / Stopwatch.Frequency));

    public void Send(string message)
    {
        try
        {
            _socket.SendTo(Encoding.UTF8.GetBytes(message.EndsWith('\n') ? message : message + "\n"), _endpoint);
        }
        catch (SocketException e)
        {
            _onError($"cannot notify systemd at NOTIFY_SOCKET: {e.Message}");
        }
    }

    public void Dispose() => _socket.Dispose();
}
