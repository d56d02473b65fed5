// Overview
// --------
// Where this gsupervisor's own files are: the binary, and beside it gsupervisor-exec, libMonoPosixHelper.so and
// dotnet/. Read from /proc/self/exe with plain libc (Mono.Posix may not be loaded yet). The runtime's
// AppContext.BaseDirectory is not used: it resolves the path with realpath, which fails for a binary that was
// replaced on disk since it started, so it is empty in an image exec'd from such a file (an upgrade that
// returns to the earlier image, Upgrade/ExecImage.cs).

using System.Runtime.InteropServices;
using System.Text;

namespace GSupervisor.Daemon.Os;

internal static unsafe partial class Installation
{
    private const string Deleted = " (deleted)";

    /// <summary>The binary this process runs, by the name it had on disk (even if a package replaced the file since).</summary>
    public static string Executable { get; } = ReadExecutable();

    /// <summary>The directory of <see cref="Executable"/>.</summary>
    public static string Directory { get; } = Path.GetDirectoryName(Executable) ?? "/";

    public static string File(string name) => Path.Combine(Directory, name);

    [LibraryImport("libc", EntryPoint = "readlink", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint readlink(string path, byte* buffer, nuint size);

    private static string ReadExecutable()
    {
        var buffer = stackalloc byte[4096];
        var n = readlink("/proc/self/exe", buffer, 4096);
        var path = n > 0 ? Encoding.UTF8.GetString(buffer, (int)n) : Environment.ProcessPath ?? AppContext.BaseDirectory + "gsupervisor";
        return path.EndsWith(Deleted, StringComparison.Ordinal) ? path[..^Deleted.Length] : path;
    }

    /// <summary>
    /// Loads libMonoPosixHelper.so from <see cref="Directory"/>; false if it is not there. Mono.Posix's P/Invokes
    /// then find it by name wherever the runtime looks: the dynamic loader matches a loaded library's soname,
    /// libMonoPosixHelper.so. (No DllImportResolver: under Native AOT, threads that bound their first calls
    /// through one at once crashed, once in a few hundred upgrades.)
    /// </summary>
    public static bool LoadMonoPosixHelper() => NativeLibrary.TryLoad(File("libMonoPosixHelper.so"), out _);
}
