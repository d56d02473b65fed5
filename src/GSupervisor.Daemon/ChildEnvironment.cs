using System.Globalization;
using GSupervisor.Core;
using GSupervisor.Daemon.Os;

namespace GSupervisor.Daemon;

/// <summary>
/// The environment every generation starts with: the supervisor's own (as it was started), less what the
/// supervisor owns (LISTEN_*, NOTIFY_SOCKET, WATCHDOG_*, GSUPERVISOR_*, and the two peers' variables below), plus
/// the child contract's variables. GSUPERVISOR_GENERATION and SERVER_STARTER_GENERATION are added per spawn,
/// LISTEN_PID by the exec helper.
/// <para>
/// So that apps written for the two most used peers run unchanged, the same fds are also described as
/// Server::Starter does (<c>SERVER_STARTER_PORT=ADDRESS=FD;...</c>: a bare port for all interfaces, HOST:PORT, or a
/// Unix socket's path) and as einhorn does (<c>EINHORN_FD_COUNT=N</c>, <c>EINHORN_FD_0=3</c>, ..., and the older
/// <c>EINHORN_FDS="3 4"</c>). einhorn's master pid and command socket are not imitated: its client libraries' ack
/// needs einhorn itself.
/// </para>
/// </summary>
internal static class ChildEnvironment
{
    public static List<string> Build(RunSettings settings, IReadOnlyList<BoundListener> listeners, string notifyPath, string handoffPath, string? dotnetHook, Launch launch)
    {
        string[] owned = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
            "SERVER_STARTER_PORT", "SERVER_STARTER_GENERATION", "EINHORN_FD_COUNT",
            .. dotnetHook is null ? Array.Empty<string>() : [StartupHooks.Variable]];
        // As systemd does for User=: HOME, USER and LOGNAME are those of the user the child runs as.
        string[] account = settings.User is null ? [] : ["HOME", "USER", "LOGNAME"];
        // The supervisor's environment with the runtime's variables it moved aside for itself (Os/RuntimeKnobs.cs),
        // which are the children's, then the file's assignments over it (a later one of a name wins), in order.
        var knobs = RuntimeKnobs.ForChildren();
        var inherited = new List<KeyValuePair<string, string>>(ProcessEnvironment.Read());
        inherited.AddRange(knobs);
        if (launch.ChangesDirectory) inherited.Add(new("PWD", launch.Directory));
        inherited.AddRange(launch.FileVariables);
        var merged = new Dictionary<string, string>(StringComparer.Ordinal);
        var order = new List<string>();
        foreach (var (key, value) in inherited)
        {
            // Every EINHORN_ variable is einhorn's to set (a supervisor started under einhorn passes none of its own on).
            if (owned.Contains(key) || account.Contains(key) || key.StartsWith("GSUPERVISOR_", StringComparison.Ordinal) ||
                key.StartsWith("EINHORN_", StringComparison.Ordinal)) continue;
            if (!merged.ContainsKey(key)) order.Add(key);
            merged[key] = value;
        }
        var environment = order.Select(key => $"{key}={merged[key]}").ToList();
        if (settings.User is { } user)
            environment.AddRange([$"HOME={user.Home}", $"USER={user.Name}", $"LOGNAME={user.Name}"]);
        if (listeners.Count > 0)
        {
            environment.Add("LISTEN_FDS=" + listeners.Count.ToString(CultureInfo.InvariantCulture));
            environment.Add("LISTEN_FDNAMES=" + string.Join(':', listeners.Select(l => l.Spec.FdName)));
            environment.Add("SERVER_STARTER_PORT=" + string.Join(';', listeners.Select((l, i) => $"{ServerStarterAddress(l)}={3 + i}")));
            environment.Add("EINHORN_FD_COUNT=" + listeners.Count.ToString(CultureInfo.InvariantCulture));
            environment.AddRange(listeners.Select((_, i) => $"EINHORN_FD_{i}={3 + i}"));
            environment.Add("EINHORN_FDS=" + string.Join(' ', listeners.Select((_, i) => 3 + i))); // einhorn's older form
        }
        environment.Add("NOTIFY_SOCKET=" + notifyPath);
        environment.Add("GSUPERVISOR_HANDOFF=" + handoffPath);
        environment.Add("GSUPERVISOR_PID=" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        if (dotnetHook is { } hook)
        {
            var hooks = launch.FileVariables.LastOrDefault(k => k.Key == StartupHooks.Variable).Value
                ?? knobs.FirstOrDefault(k => k.Key == StartupHooks.Variable).Value ?? Environment.GetEnvironmentVariable(StartupHooks.Variable);
            environment.Add(StartupHooks.Variable + "=" + StartupHooks.Append(hooks, hook));
        }
        return environment;
    }

    /// <summary>A listener as start_server names it: 8080 (all interfaces), 127.0.0.1:8080, [::1]:8080 or /run/app.sock.</summary>
    internal static string ServerStarterAddress(BoundListener listener) =>
        listener.Address.StartsWith("unix:", StringComparison.Ordinal) ? listener.Address["unix:".Length..]
        : listener.Spec.Kind == ListenKind.TcpAnyAddress ? listener.Address[(listener.Address.LastIndexOf(':') + 1)..]
        : listener.Address;
}
