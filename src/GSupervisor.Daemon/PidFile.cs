using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using GSupervisor.Daemon.Os;
using Mono.Unix.Native;

namespace GSupervisor.Daemon;

internal static class PidFile
{
    /// <summary>
    /// Writes our pid to <paramref name="path"/> atomically: into a new file of a random name beside it, made with
    /// O_CREAT|O_EXCL|O_NOFOLLOW (so nothing planted there, a symlink least of all, is followed or truncated),
    /// then renamed over the path (which replaces a symlink there rather than writing through it).
    /// </summary>
    public static void Write(string path)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var temporary = Path.Combine(directory, $".{Path.GetFileName(path)}.{Convert.ToHexString(RandomNumberGenerator.GetBytes(6)).ToLowerInvariant()}");
        var fd = Syscall.open(temporary, OpenFlags.O_WRONLY | OpenFlags.O_CREAT | OpenFlags.O_EXCL | OpenFlags.O_NOFOLLOW | OpenFlags.O_CLOEXEC,
            FilePermissions.S_IRUSR | FilePermissions.S_IWUSR | FilePermissions.S_IRGRP | FilePermissions.S_IROTH);
        if (fd < 0) throw Failed(path, ErrorNumbers.Last);
        try
        {
            var text = Encoding.ASCII.GetBytes(Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
            if (Fd.WriteAll(fd, text) != text.Length) throw Failed(path, ErrorNumbers.Last);
        }
        catch
        {
            Syscall.close(fd);
            Syscall.unlink(temporary);
            throw;
        }
        Syscall.close(fd);
        if (Stdlib.rename(temporary, path) != 0)
        {
            var errno = ErrorNumbers.Last;
            Syscall.unlink(temporary);
            throw Failed(path, errno);
        }
    }

    private static StartupException Failed(string path, int errno) =>
        new(errno is ErrorNumbers.EACCES or ErrorNumbers.EPERM or ErrorNumbers.EROFS ? ExitCodes.NoPermission : ExitCodes.CannotCreate,
            $"cannot write --pid-file {path}: {ErrorNumbers.Describe(errno)}");

    /// <summary>Removes the file if it still holds our pid (another instance may have taken it over).</summary>
    public static void Remove(string path)
    {
        try
        {
            if (File.Exists(path) && File.ReadAllText(path).Trim() == Environment.ProcessId.ToString(CultureInfo.InvariantCulture))
                File.Delete(path);
        }
        catch (IOException)
        {
            // Best effort at exit: a pid file we cannot read or remove is left for the next start to overwrite.
        }
    }
}
