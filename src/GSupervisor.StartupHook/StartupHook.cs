// Overview
// --------
// gsupervisor puts this assembly in DOTNET_STARTUP_HOOKS for every child, so an unmodified ASP.NET Core app
// gets what UseGSupervisor() gives (Kestrel on the handed sockets, READY=1, the drain) with zero lines of code.
// The runtime calls StartupHook.Initialize() before the app's Main. It:
//   1. takes itself out of DOTNET_STARTUP_HOOKS, so the app's own .NET children are not injected again;
//   2. leaves alone a process not started by gsupervisor and a .NET app that is not an ASP.NET Core app
//      (no output, nothing changed);
//   3. says in one line why it does nothing on a runtime or ASP.NET Core older than the integration's;
//   4. otherwise resolves GSupervisor.* from its own folder (unless the app ships them itself) and calls
//      GSupervisor.AspNetCore's entry point, which takes the sockets (removing LISTEN_FDS/LISTEN_PID) and names
//      its IHostingStartup in ASPNETCORE_HOSTINGSTARTUPASSEMBLIES.
// It never throws: whatever goes wrong, the app runs as it would without gsupervisor's integration.
// This file is netstandard2.0 so that it loads on any runtime; it only touches the newer code by reflection.

using System;
using System.IO;
using System.Linq;
using System.Reflection;

internal static class StartupHook
{
    /// <summary>The major version of .NET and ASP.NET Core the integration is built for (GSupervisor.AspNetCore's).</summary>
    private const int IntegrationMajorVersion = 10;

    private static readonly string[] OwnAssemblies = ["GSupervisor.AspNetCore", "GSupervisor.Client", "GSupervisor.Core"];

    public static void Initialize()
    {
        try
        {
            var hookPath = typeof(StartupHook).Assembly.Location;
            RemoveFromList("DOTNET_STARTUP_HOOKS", Path.PathSeparator, hookPath);
            if (Environment.GetEnvironmentVariable("GSUPERVISOR_PID") is null) return;
            if (FindInTrustedPlatformAssemblies("Microsoft.AspNetCore.Hosting") is not { } hosting) return; // not a web app

            var aspNetCore = AssemblyName.GetAssemblyName(hosting).Version;
            if (Environment.Version.Major < IntegrationMajorVersion || aspNetCore.Major < IntegrationMajorVersion)
            {
                Say($"the app runs on .NET {Environment.Version.ToString(2)} with ASP.NET Core {aspNetCore.ToString(2)}; " +
                    $"the injected drain serves .NET {IntegrationMajorVersion} and later, so this app runs without it " +
                    "(reloads may fail requests on keep-alive connections; see the README)");
                return;
            }

            var folder = Path.GetDirectoryName(hookPath)!;
            AppDomain.CurrentDomain.AssemblyResolve += (_, args) =>
            {
                var name = new AssemblyName(args.Name).Name;
                var path = Path.Combine(folder, name + ".dll");
                return OwnAssemblies.Contains(name) && File.Exists(path) ? Assembly.LoadFrom(path) : null;
            };
            var integration = Assembly.Load(new AssemblyName("GSupervisor.AspNetCore"));
            var entry = integration.GetType("GSupervisor.AspNetCore.StartupHookEntry")?
                .GetMethod("Initialize", BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic);
            if (entry is null)
            {
                Say($"the app ships GSupervisor.AspNetCore {integration.GetName().Version}, which has no entry for the startup hook; " +
                    "the app's own UseGSupervisor() call, if any, does the work");
                return;
            }
            entry.Invoke(null, null);
        }
        catch (Exception e)
        {
            var inner = e is TargetInvocationException { InnerException: { } cause } ? cause : e;
            Say($"the startup hook could not set up the injected drain ({inner.GetType().Name}: {inner.Message}); the app runs without it");
        }
    }

    /// <summary>The path of a framework or app assembly the runtime would load, without loading it.</summary>
    private static string? FindInTrustedPlatformAssemblies(string name) =>
        (AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") as string)?
            .Split(Path.PathSeparator)
            .FirstOrDefault(p => string.Equals(Path.GetFileNameWithoutExtension(p), name, StringComparison.Ordinal));

    private static void RemoveFromList(string variable, char separator, string item)
    {
        var value = Environment.GetEnvironmentVariable(variable);
        if (value is null) return;
        var rest = value.Split(separator).Where(p => p.Length > 0 && p != item).ToArray();
        Environment.SetEnvironmentVariable(variable, rest.Length == 0 ? null : string.Join(separator.ToString(), rest));
    }

    private static void Say(string line) => Console.Error.WriteLine("gsupervisor: " + line);
}
