// A .NET console app that knows nothing of gsupervisor. It prints what it inherited (the variables gsupervisor's
// startup hook could touch, whether fd 3 is still an open socket, which GSupervisor assemblies are loaded),
// writes a line to stderr and exits with status 3, so a test can compare a run with the hook injected to one
// without it.


foreach (var name in new[] { "LISTEN_FDS", "LISTEN_FDNAMES", "DOTNET_STARTUP_HOOKS", "ASPNETCORE_HOSTINGSTARTUPASSEMBLIES" })
    Console.WriteLine($"{name}={Environment.GetEnvironmentVariable(name) ?? "(unset)"}");
var fd3 = File.Exists("/proc/self/fd/3") ? new FileInfo("/proc/self/fd/3").LinkTarget ?? "" : "closed";
Console.WriteLine($"fd 3: {(fd3.StartsWith("socket:", StringComparison.Ordinal) ? "socket" : fd3)}");
// The hook's own small assembly is loaded when it is injected; nothing of the integration should be.
Console.WriteLine($"loaded: {string.Join(",", AppDomain.CurrentDomain.GetAssemblies().Select(a => a.GetName().Name)
    .Where(n => n!.StartsWith("GSupervisor", StringComparison.Ordinal) && n != "GSupervisor.StartupHook").DefaultIfEmpty("no GSupervisor assembly"))}");
Console.Error.WriteLine("console app done");
return 3;
