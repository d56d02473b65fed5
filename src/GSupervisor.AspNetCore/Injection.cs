// Overview
// --------
// How gsupervisor reaches an unmodified ASP.NET Core app (zero lines of code). gsupervisor names its startup hook
// (GSupervisor.StartupHook.dll) in DOTNET_STARTUP_HOOKS; before the app's Main, the hook checks the runtime and
// calls StartupHookEntry.Initialize below, which
//   - takes the sockets (GSupervisorClient.Connect removes LISTEN_FDS/LISTEN_PID, so an app that also calls
//     Kestrel's UseSystemd() does not bind them a second time), and
//   - names this assembly in ASPNETCORE_HOSTINGSTARTUPASSEMBLIES (a list: the user's entries are kept).
// When the app builds its web host, ASP.NET Core runs InjectedHostingStartup.Configure, which is
// UseGSupervisor() with the settings of the app's "GSupervisor" configuration section. An app that calls
// UseGSupervisor() itself as well only has its options applied to the same settings.
// A .NET app that builds no web host never reaches the hosting startup: it only had its sockets taken, which it
// did not use (LISTEN_FDS is gsupervisor's to give; a console app that wants them references GSupervisor.Client,
// whose Connect() returns the same connection).

using GSupervisor.AspNetCore;
using GSupervisor.Client;
using Microsoft.AspNetCore.Hosting;

[assembly: HostingStartup(typeof(InjectedHostingStartup))]

namespace GSupervisor.AspNetCore;

/// <summary>Called by gsupervisor's startup hook (by reflection) before the app's Main.</summary>
internal static class StartupHookEntry
{
    public const string HostingStartupVariable = "ASPNETCORE_HOSTINGSTARTUPASSEMBLIES";

    /// <summary>True once the hook has run in this process: the hosting startup then configures the web host.</summary>
    internal static bool Injected { get; private set; }

    public static void Initialize()
    {
        var client = GSupervisorClient.Connect();
        if (!client.IsSupervised) return;
        Injected = true;
        var name = typeof(StartupHookEntry).Assembly.GetName().Name!;
        var current = Environment.GetEnvironmentVariable(HostingStartupVariable);
        var entries = (current ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
        if (!entries.Contains(name)) entries.Add(name);
        Environment.SetEnvironmentVariable(HostingStartupVariable, string.Join(';', entries));
        s_addedToHostingStartups = current is null || !current.Contains(name, StringComparison.Ordinal) ? name : null;
    }

    private static string? s_addedToHostingStartups;

    /// <summary>Takes back what Initialize added to ASPNETCORE_HOSTINGSTARTUPASSEMBLIES once the web host has read it, so the app's own children do not see it.</summary>
    internal static void RestoreHostingStartupVariable()
    {
        if (s_addedToHostingStartups is not { } name) return;
        var rest = (Environment.GetEnvironmentVariable(HostingStartupVariable) ?? "")
            .Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Where(e => e != name).ToList();
        Environment.SetEnvironmentVariable(HostingStartupVariable, rest.Count == 0 ? null : string.Join(';', rest));
        s_addedToHostingStartups = null;
    }
}

/// <summary>UseGSupervisor() for an app gsupervisor injected, run by ASP.NET Core while it builds the web host.</summary>
internal sealed class InjectedHostingStartup : IHostingStartup
{
    public void Configure(IWebHostBuilder builder)
    {
        if (!StartupHookEntry.Injected) return; // named by someone else, outside gsupervisor's hook
        StartupHookEntry.RestoreHostingStartupVariable();
        builder.ConfigureServices((context, services) =>
            GSupervisorWebHostExtensions.Configure(context.Configuration, services, configure: null, injected: true));
    }
}
