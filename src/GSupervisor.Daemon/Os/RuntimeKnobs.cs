// Overview
// --------
// The .NET runtime reads its knobs (DOTNET_gcServer, DOTNET_GCHeapHardLimit, DOTNET_TieredCompilation, the
// COMPlus_ spellings, ...) from the environment before Main runs, and the supervisor is a .NET program too: a
// unit that sets DOTNET_gcServer=1 for its app would give gsupervisor a server GC as well. So, first thing, a
// supervisor started with such variables execs itself again (same pid, same fds, nothing started yet) without
// them, carrying them in GSUPERVISOR_CHILD_DOTNET for its children, which get them back as they were. If the
// exec fails, it runs with them, as before.

using System.Text;
using GSupervisor.Core;

namespace GSupervisor.Daemon.Os;

internal static unsafe class RuntimeKnobs
{
    private const string Carrier = "GSUPERVISOR_CHILD_DOTNET";

    private static bool IsKnob(string key) =>
        key.StartsWith("DOTNET_", StringComparison.Ordinal) || key.StartsWith("COMPlus_", StringComparison.OrdinalIgnoreCase);

    /// <summary>Re-executes the supervisor without the runtime's variables when any is set; returns when none is (or the exec failed).</summary>
    public static void MoveAsideAndReexec(string[] args)
    {
        var knobs = new List<string>();
        var kept = new List<string>();
        foreach (var (key, value) in ProcessEnvironment.Read())
        {
            if (key == Carrier) continue; // a stale one is not ours
            (IsKnob(key) ? knobs : kept).Add($"{key}={value}");
        }
        if (knobs.Count == 0) return;
        kept.Add(Carrier + "=" + Convert.ToBase64String(Encoding.UTF8.GetBytes(string.Join('\0', knobs))));
        string[] argv = [Environment.GetCommandLineArgs()[0], .. args];
        var path = Utf8("/proc/self/exe"); // the running binary, even if a package upgrade has replaced the file
        var nativeArgv = NullTerminated(argv);
        var nativeEnvp = NullTerminated(kept);
        fixed (byte* p = path) Libc.execve(p, nativeArgv, nativeEnvp);
        // Still here: the exec failed. Run with the knobs rather than not at all (the memory is the process's).
    }

    /// <summary>The runtime variables the supervisor was started with, which belong to its children.</summary>
    public static IReadOnlyList<KeyValuePair<string, string>> ForChildren()
    {
        var carried = Environment.GetEnvironmentVariable(Carrier);
        if (string.IsNullOrEmpty(carried)) return [];
        try
        {
            return Encoding.UTF8.GetString(Convert.FromBase64String(carried)).Split('\0')
                .Select(e => e.Split('=', 2)).Where(p => p.Length == 2 && IsKnob(p[0]))
                .Select(p => new KeyValuePair<string, string>(p[0], p[1])).ToList();
        }
        catch (FormatException)
        {
            return [];
        }
    }

    private static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s + "\0");

    private static byte** NullTerminated(IReadOnlyList<string> values)
    {
        var array = (byte**)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)(values.Count + 1), (nuint)sizeof(byte*));
        for (var i = 0; i < values.Count; i++)
        {
            var bytes = Utf8(values[i]);
            var native = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)bytes.Length);
            bytes.CopyTo(new Span<byte>(native, bytes.Length));
            array[i] = native;
        }
        array[values.Count] = null;
        return array;
    }
}
