// Overview
// --------
// gsupervisor's .NET startup hook (GSupervisor.StartupHook.dll and the integration beside it) ships in
// lib/gsupervisor/dotnet/, next to the binary. The supervisor names it in DOTNET_STARTUP_HOOKS for its children,
// so an unmodified ASP.NET Core app drains on reload (see GSupervisor.AspNetCore/Injection.cs). A hook path the
// runtime cannot read stops a .NET app before Main, so the hook is only named when it exists and the children's
// user can read it.

using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal static class DotnetHook
{
    /// <summary>The hook to name for children running as <paramref name="user"/> (null: the supervisor's own user), or null and why not.</summary>
    public static string? Locate(ChildUser? user, out string? problem)
    {
        var path = Path.Combine(Installation.Directory, "dotnet", "GSupervisor.StartupHook.dll");
        problem = null;
        if (!File.Exists(path))
            problem = $"the .NET integration is not installed at {path}: .NET children run without the injected drain; reinstall gsupervisor, or pass --no-inject";
        else if (user is not null && FirstUnreadable(path, user) is { } blocked)
            problem = $"user {user.Name} cannot read {blocked}, so .NET children would fail to load gsupervisor's startup hook; " +
                      "they run without the injected drain (make the installation readable, or pass --no-inject)";
        return problem is null ? path : null;
    }

    /// <summary>The file or folder on the way to <paramref name="path"/> that <paramref name="user"/> may not pass or read, by its mode bits.</summary>
    private static string? FirstUnreadable(string path, ChildUser user)
    {
        if (user.Uid == 0) return null;
        var need = FilePermissions.S_IROTH;
        for (var current = Path.GetFullPath(path); !string.IsNullOrEmpty(current); current = Path.GetDirectoryName(current))
        {
            if (Syscall.stat(current, out var st) != 0) return current;
            var (own, group, other) = need == FilePermissions.S_IROTH
                ? (FilePermissions.S_IRUSR, FilePermissions.S_IRGRP, FilePermissions.S_IROTH)
                : (FilePermissions.S_IXUSR, FilePermissions.S_IXGRP, FilePermissions.S_IXOTH);
            var allowed = st.st_uid == user.Uid ? (st.st_mode & own) != 0
                : st.st_gid == user.Gid ? (st.st_mode & group) != 0
                : (st.st_mode & other) != 0;
            if (!allowed) return current;
            need = FilePermissions.S_IXOTH; // every folder above must be searchable
        }
        return null;
    }
}
