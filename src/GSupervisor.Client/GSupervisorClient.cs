// Overview
// --------
// What an app uses to be a gsupervisor child. Connect() takes the listening sockets over the handoff socket
// (GSUPERVISOR_HANDOFF, SCM_RIGHTS), falling back to the systemd protocol (LISTEN_FDS at fds 3.., valid only
// when LISTEN_PID is this process). Readiness and status go over the handoff connection when there is one,
// else as sd_notify datagrams to NOTIFY_SOCKET. The handoff connection stays open: the supervisor's lines on it
// say drain (DrainRequested) and, under --probation, when this generation's probation begins and passes
// (ProbationStarted, ProbationPassed); end of file on it means the supervisor is gone (SupervisorGone).

using System.Globalization;
using System.Net.Sockets;
using System.Text;
using GSupervisor.Core;

namespace GSupervisor.Client;

/// <summary>
/// A listening socket handed to this process, with its name from <c>--listen NAME=...</c>. Its fd is
/// close-on-exec, so it does not leak into the app's own children.
/// </summary>
public sealed class InheritedListener
{
    private readonly Lazy<Socket> _socket;

    internal InheritedListener(string name, int fd)
    {
        Name = name;
        Fd = fd;
        _socket = new Lazy<Socket>(() => new Socket(new SafeSocketHandle(fd, ownsHandle: true)));
    }

    /// <summary>The listener's name; <c>unknown</c> when it was given none.</summary>
    public string Name { get; }

    /// <summary>The socket's file descriptor in this process, for servers that adopt a raw handle (Kestrel's <c>ListenHandle</c>).</summary>
    public int Fd { get; }

    /// <summary>
    /// The listening socket as a .NET <see cref="System.Net.Sockets.Socket"/>, created on first use and owning the fd.
    /// Use either this or <see cref="Fd"/>, not both. Stop accepting by cancelling the accept, never by
    /// disposing or shutting down the socket while an accept is pending: that would disconnect the socket shared
    /// with the other generation.
    /// </summary>
    public Socket Socket => _socket.Value;
}

/// <summary>Choices for <see cref="GSupervisorClient.Connect(GSupervisorClientOptions?)"/>.</summary>
public sealed record GSupervisorClientOptions
{
    /// <summary>
    /// Take the listeners over the handoff socket when the supervisor offers one (the default). When false,
    /// only the systemd protocol (LISTEN_FDS at fds 3..) is used and readiness goes to NOTIFY_SOCKET.
    /// </summary>
    public bool UseHandoffSocket { get; init; } = true;
}

/// <summary>How the listeners reached this process.</summary>
public enum ListenerSource
{
    /// <summary>No listeners: not supervised, or the supervisor has none.</summary>
    None,
    /// <summary>Received over the gsupervisor handoff socket (SCM_RIGHTS).</summary>
    Handoff,
    /// <summary>Inherited at fds 3.. by the systemd socket-activation protocol (LISTEN_FDS).</summary>
    ListenFds,
}

/// <summary>
/// The connection of an app to its gsupervisor: the listening sockets, readiness reports, and notice of the
/// supervisor's end. Create it with <see cref="Connect(GSupervisorClientOptions?)"/> once, early in the app's start.
/// </summary>
public sealed class GSupervisorClient : IDisposable
{
    private readonly Socket? _handoff;
    private readonly string? _notifySocket;
    private readonly CancellationTokenSource _gone = new();
    private readonly CancellationTokenSource _drain = new();
    private readonly CancellationTokenSource _probationStarted = new();
    private readonly CancellationTokenSource _probationPassed = new();
    private long _probationEndsAt; // Environment.TickCount64 milliseconds; set before _probationStarted is cancelled
    private readonly Lock _sendLock = new();
    private volatile bool _disposed;

    private GSupervisorClient(bool supervised, int? generation, IReadOnlyList<InheritedListener> listeners,
        ListenerSource source, Socket? handoff, string? notifySocket)
    {
        IsSupervised = supervised;
        Generation = generation;
        Listeners = listeners;
        Source = source;
        _handoff = handoff;
        _notifySocket = notifySocket;
        if (_handoff is not null)
            new Thread(WatchSupervisor) { IsBackground = true, Name = "gsupervisor-watch" }.Start();
    }

    /// <summary>True when this process runs under gsupervisor (GSUPERVISOR_PID is set).</summary>
    public bool IsSupervised { get; }

    /// <summary>This process's generation number (1, 2, 3, ...), or null when not supervised.</summary>
    public int? Generation { get; }

    /// <summary>The listening sockets handed to this process, in the supervisor's <c>--listen</c> order.</summary>
    public IReadOnlyList<InheritedListener> Listeners { get; }

    /// <summary>How <see cref="Listeners"/> arrived.</summary>
    public ListenerSource Source { get; }

    /// <summary>
    /// Cancelled when the supervisor is gone (its handoff connection reached end of file). The app decides what
    /// to do; the usual answer is to stop gracefully, so that a restarted supervisor can bind again.
    /// Never cancelled when the listeners came by LISTEN_FDS alone.
    /// </summary>
    public CancellationToken SupervisorGone => _gone.Token;

    /// <summary>
    /// Cancelled when the supervisor asks this generation to drain (a newer one is serving, or the supervisor is
    /// shutting down): stop accepting, finish the work in hand, then exit. It arrives over the handoff connection
    /// just before the stop signal, so it is never cancelled when the listeners came by LISTEN_FDS alone; such
    /// apps watch for the stop signal (SIGTERM by default) themselves.
    /// </summary>
    public CancellationToken DrainRequested => _drain.Token;

    /// <summary>
    /// Cancelled when the supervisor puts this generation on probation (<c>gsupervisor --probation D</c>): it is
    /// ready and serves beside the generation it is to replace, which keeps serving until the probation passes.
    /// If this generation exits or calls <see cref="ReportFailure"/> before then, it is drained and the previous
    /// generation serves on (a rollback). Watch the app's health from here until <see cref="ProbationPassed"/>;
    /// <see cref="ProbationLeft"/> says how long is left. Never cancelled without a handoff connection, for the
    /// first generation, or without <c>--probation</c>.
    /// </summary>
    public CancellationToken ProbationStarted => _probationStarted.Token;

    /// <summary>Cancelled when this generation's probation has passed: it now serves alone.</summary>
    public CancellationToken ProbationPassed => _probationPassed.Token;

    /// <summary>The time left of this generation's probation; zero when it is not on probation.</summary>
    public TimeSpan ProbationLeft => _probationStarted.IsCancellationRequested && !_probationPassed.IsCancellationRequested && !_drain.IsCancellationRequested
        ? TimeSpan.FromMilliseconds(Math.Max(0, Interlocked.Read(ref _probationEndsAt) - Environment.TickCount64))
        : TimeSpan.Zero;

    /// <summary>
    /// Connects using this process's environment. Outside gsupervisor it does not fail: then
    /// <see cref="IsSupervised"/> is false and <see cref="Listeners"/> is empty (or holds LISTEN_FDS sockets
    /// when another socket activator, such as systemd, passed them).
    /// </summary>
    /// <exception cref="IOException">The supervisor's handoff socket is named but refused or broke the handoff.</exception>
    /// <remarks>
    /// The sockets are taken once per process: a second call returns the same connection until it is disposed,
    /// so gsupervisor's injected integration and an app's own call share one.
    /// </remarks>
    public static GSupervisorClient Connect(GSupervisorClientOptions? options = null)
    {
        lock (ProcessClientLock)
        {
            if (s_processClient is { _disposed: false } existing) return existing;
            var client = Connect(ProcessEnvironment.Read(), Environment.ProcessId, options ?? new GSupervisorClientOptions());
            // As sd_listen_fds(unset_environment=1): the fds are taken, so no one else (Kestrel's UseSystemd(), the
            // app's own children) may adopt fds 3.. again.
            if (client.Source != ListenerSource.None)
                foreach (var name in new[] { "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES" })
                    Environment.SetEnvironmentVariable(name, null);
            s_processClient = client;
            return client;
        }
    }

    private static readonly Lock ProcessClientLock = new();
    private static GSupervisorClient? s_processClient;

    /// <summary>Connects using the given environment and pid (internal for testing).</summary>
    internal static GSupervisorClient Connect(IReadOnlyDictionary<string, string> environment, int processId, GSupervisorClientOptions options)
    {
        var supervised = environment.ContainsKey("GSUPERVISOR_PID");
        int? generation = environment.TryGetValue("GSUPERVISOR_GENERATION", out var g) &&
            int.TryParse(g, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : null;
        var notify = environment.GetValueOrDefault("NOTIFY_SOCKET") is { Length: > 0 } ns ? ns : null;

        if (options.UseHandoffSocket && environment.GetValueOrDefault("GSUPERVISOR_HANDOFF") is { Length: > 0 } handoffPath)
        {
            var (socket, greeting, listeners) = Handoff(handoffPath);
            // The fds at 3.. are the same sockets; close those copies so the app holds each socket once.
            CloseListenFds(environment, processId);
            return new GSupervisorClient(supervised, greeting.Generation, listeners, ListenerSource.Handoff, socket, notify);
        }

        var inherited = FromListenFds(environment, processId);
        return new GSupervisorClient(supervised || inherited.Count > 0, generation, inherited,
            inherited.Count > 0 ? ListenerSource.ListenFds : ListenerSource.None, null, notify);
    }

    /// <summary>Reports that the app is ready to serve: the supervisor then stops the previous generation.</summary>
    public void NotifyReady() => Send("READY=1");

    /// <summary>Reports a one-line human-readable status.</summary>
    public void NotifyStatus(string status) => Send("STATUS=" + status.Replace('\n', ' '));

    /// <summary>
    /// Reports that the app has failed and should not go on serving (sd_notify's <c>WATCHDOG=trigger</c>, with
    /// <paramref name="reason"/> as its status). During this generation's probation the supervisor rolls it back:
    /// it is drained (<see cref="DrainRequested"/>) and the previous generation, which never stopped serving, serves
    /// on; <c>gsupervisor reload --wait</c> fails with the reason. Before ready it fails the reload the same way.
    /// While it serves alone, the supervisor starts a replacement beside it, as a reload does (not with
    /// <c>--no-restart</c>). Outside gsupervisor, or under systemd with <c>WatchdogSec=</c>, systemd acts on it as
    /// on a missed watchdog ping.
    /// </summary>
    public void ReportFailure(string reason) => Send($"STATUS={reason.Replace('\n', ' ')}\nWATCHDOG=trigger");

    /// <summary>Reports that the app has begun to stop.</summary>
    public void NotifyStopping() => Send("STOPPING=1");

    /// <summary>
    /// Tells the supervisor how this generation drains on its stop signal (for example <c>http</c>), which
    /// <c>gsupervisor status</c> shows. A generation that announces nothing is shown without a drain.
    /// </summary>
    public void NotifyDrain(string description) => Send(HandoffProtocol.DrainField + "=" + description.Replace('\n', ' '));

    private void Send(string line)
    {
        var bytes = Encoding.UTF8.GetBytes(line + "\n");
        lock (_sendLock)
        {
            if (_handoff is not null && !_gone.IsCancellationRequested)
            {
                try
                {
                    _handoff.Send(bytes);
                    return;
                }
                catch (SocketException)
                {
                    // The supervisor went away mid-send; fall through to NOTIFY_SOCKET, which may still reach it.
                }
            }
            if (_notifySocket is null) return;
            using var datagram = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            try
            {
                datagram.SendTo(bytes, new UnixDomainSocketEndPoint(_notifySocket.StartsWith('@') ? "\0" + _notifySocket[1..] : _notifySocket));
            }
            catch (SocketException)
            {
                // No supervisor listening: as sd_notify, reporting to nobody is not an error.
            }
        }
    }

    private void WatchSupervisor()
    {
        var buffer = new byte[256];
        var line = new StringBuilder();
        try
        {
            int n;
            while ((n = _handoff!.Receive(buffer)) > 0)
            {
                foreach (var c in Encoding.ASCII.GetString(buffer, 0, n))
                {
                    if (c != '\n')
                    {
                        if (line.Length < 256) line.Append(c);
                        continue;
                    }
                    OnSupervisorLine(line.ToString());
                    line.Clear();
                }
            }
        }
        catch (SocketException)
        {
            // A reset is the supervisor going away too, unless the app closed the connection itself.
        }
        catch (ObjectDisposedException)
        {
            return; // the app closed the connection itself
        }
        if (!_disposed) _gone.Cancel();
    }

    /// <summary>Acts on a line from the supervisor (internal for testing); lines a later supervisor may add are ignored.</summary>
    internal void OnSupervisorLine(string line)
    {
        if (line == HandoffProtocol.DrainLine)
        {
            Cancel(_drain, nameof(DrainRequested));
        }
        else if (line == HandoffProtocol.ProbationPassedLine)
        {
            Cancel(_probationPassed, nameof(ProbationPassed));
        }
        else if (HandoffProtocol.TryParseProbation(line, out var left))
        {
            Interlocked.Exchange(ref _probationEndsAt, Environment.TickCount64 + (long)left.TotalMilliseconds);
            Cancel(_probationStarted, nameof(ProbationStarted));
        }
    }

    /// <summary>Runs the app's callbacks of a token; one that throws must not end the thread that reads the supervisor's lines.</summary>
    private static void Cancel(CancellationTokenSource source, string token)
    {
        try
        {
            source.Cancel();
        }
        catch (AggregateException e)
        {
            Console.Error.WriteLine($"GSupervisor.Client: a callback of {token} threw: {e.InnerException?.Message ?? e.Message}");
        }
    }

    private static (Socket Socket, HandoffProtocol.Greeting Greeting, List<InheritedListener> Listeners) Handoff(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        var fds = new List<int>();
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(path));
            socket.ReceiveTimeout = (int)HandoffTimeout.TotalMilliseconds; // a stalled supervisor must not hang the app's start
            var line = new List<byte>();
            var buffer = new byte[HandoffProtocol.MaxLineBytes];
            while (!line.Contains((byte)'\n'))
            {
                var n = Native.Receive((int)socket.Handle, buffer, fds);
                if (n == 0) throw new IOException("the supervisor closed the handoff connection before its greeting");
                line.AddRange(buffer.AsSpan(0, n).ToArray());
                if (line.Count > HandoffProtocol.MaxLineBytes) throw new IOException("the handoff greeting is too long");
            }
            var text = Encoding.UTF8.GetString(line.ToArray(), 0, line.IndexOf((byte)'\n'));
            if (!HandoffProtocol.TryParseGreeting(text, out var greeting, out var error) || greeting!.FdCount != fds.Count)
                throw new IOException(error.Length > 0 ? error : $"the greeting announced {greeting!.FdCount} sockets but {fds.Count} arrived");
            socket.ReceiveTimeout = 0;
            var listeners = fds.Select((fd, i) => new InheritedListener(greeting.Names[i], fd)).ToList();
            return (socket, greeting, listeners);
        }
        catch
        {
            foreach (var fd in fds) Native.close(fd);
            socket.Dispose();
            throw;
        }
    }

    private static List<InheritedListener> FromListenFds(IReadOnlyDictionary<string, string> environment, int processId)
    {
        var count = ListenFdCount(environment, processId);
        var names = environment.GetValueOrDefault("LISTEN_FDNAMES")?.Split(':') ?? [];
        var listeners = new List<InheritedListener>();
        for (var i = 0; i < count; i++)
        {
            var fd = 3 + i;
            Native.SetCloseOnExec(fd);
            listeners.Add(new InheritedListener(i < names.Length && names[i].Length > 0 ? names[i] : "unknown", fd));
        }
        return listeners;
    }

    private static void CloseListenFds(IReadOnlyDictionary<string, string> environment, int processId)
    {
        // Only what is still a socket: an fd the app reused for something else since is not ours to close.
        var count = ListenFdCount(environment, processId);
        for (var i = 0; i < count; i++)
            if (Native.IsSocket(3 + i)) Native.close(3 + i);
    }

    private static int ListenFdCount(IReadOnlyDictionary<string, string> environment, int processId)
    {
        if (!environment.TryGetValue("LISTEN_PID", out var pid) || pid != processId.ToString(CultureInfo.InvariantCulture)) return 0;
        return environment.TryGetValue("LISTEN_FDS", out var fds) && int.TryParse(fds, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0;
    }

    /// <summary>Closes the handoff connection. The listener sockets belong to the app and are left open.</summary>
    public void Dispose()
    {
        _disposed = true;
        _handoff?.Dispose();
    }

    /// <summary>How long the handoff may take before Connect gives up.</summary>
    private static readonly TimeSpan HandoffTimeout = TimeSpan.FromSeconds(10);
}
