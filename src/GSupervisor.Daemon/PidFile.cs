using System.Globalization;

namespace GSupervisor.Daemon;

internal static class PidFile
{
    public static void Write(string path)
    {
        var temporary = path + ".tmp";
        try
        {
            File.WriteAllText(temporary, Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
            File.Move(temporary, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new StartupException(e is UnauthorizedAccessException ? ExitCodes.NoPermission : ExitCodes.CannotCreate,
                $"cannot write --pid-file {path}: {e.Message}");
        }
    }

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
