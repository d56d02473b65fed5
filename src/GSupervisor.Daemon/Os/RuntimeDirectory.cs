using System.Text;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

/// <summary>
/// A private directory (mode 0700) for the notify and handoff sockets, under $XDG_RUNTIME_DIR when set and
/// short enough for a socket path, else under /tmp. Removed when the supervisor exits.
/// </summary>
internal sealed class RuntimeDirectory : IDisposable
{
    private RuntimeDirectory(string path) => Path = path;

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>The directory an earlier image made (an in-place upgrade); its files are recorded again with Own.</summary>
    public static RuntimeDirectory Adopt(string path) => new(path);

    /// <param name="forOtherUser">Children run as another user (--user): only a root every user can traverse will do.</param>
    public static RuntimeDirectory Create(bool forOtherUser = false)
    {
        var candidates = new List<string>();
        if (Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } xdg) candidates.Add(xdg);
        if (Environment.GetEnvironmentVariable("TMPDIR") is { Length: > 0 } tmp) candidates.Add(tmp);
        candidates.Add("/tmp");
        var errors = new List<string>();
        foreach (var root in candidates)
        {
            var template = System.IO.Path.Combine(root, "gsupervisor.XXXXXX");
            // Room for "/handoff" and the NUL within the 108 bytes of a socket address.
            if (Encoding.UTF8.GetByteCount(template) + 10 > 107) continue;
            if (forOtherUser && (Syscall.stat(root, out var st) != 0 || (st.st_mode & FilePermissions.S_IXOTH) == 0)) continue;
            var made = Syscall.mkdtemp(new StringBuilder(template));
            if (made is not null) return new RuntimeDirectory(made.ToString());
            errors.Add($"{root}: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        }
        throw new StartupException(ExitCodes.OsError,
            $"cannot create a private runtime directory ({string.Join("; ", errors)}); set TMPDIR to a writable directory");
    }

    private readonly List<string> _files = [];

    /// <summary>Records a file of ours in the directory, removed by name on exit.</summary>
    public string Own(string name)
    {
        var path = File(name);
        _files.Add(path);
        return path;
    }

    /// <summary>
    /// Lets the children's user (--user) reach the sockets: the directory stays root's, traversable but not
    /// listable or writable (0711), and only the sockets are given to that user.
    /// </summary>
    public void GrantTo(uint uid, uint gid, IEnumerable<string> sockets)
    {
        Syscall.chmod(Path, FilePermissions.S_IRWXU | FilePermissions.S_IXGRP | FilePermissions.S_IXOTH);
        foreach (var path in sockets)
            if (Syscall.chown(path, uid, gid) != 0)
                throw new StartupException(ExitCodes.OsError, $"cannot give {path} to uid {uid}: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
    }

    /// <summary>Removes our files by name and the directory if empty: never a recursive delete as root.</summary>
    public void Dispose()
    {
        foreach (var path in _files) Syscall.unlink(path);
        Syscall.rmdir(Path);
    }
}
