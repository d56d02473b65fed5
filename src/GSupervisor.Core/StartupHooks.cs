namespace GSupervisor.Core;

/// <summary>The DOTNET_STARTUP_HOOKS list (paths separated by ':') that gsupervisor gives a child.</summary>
public static class StartupHooks
{
    public const string Variable = "DOTNET_STARTUP_HOOKS";

    /// <summary>The hooks already set, in their order, and then <paramref name="hook"/> (once).</summary>
    public static string Append(string? existing, string hook)
    {
        var entries = (existing ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries).Where(e => e != hook).ToList();
        entries.Add(hook);
        return string.Join(':', entries);
    }
}
