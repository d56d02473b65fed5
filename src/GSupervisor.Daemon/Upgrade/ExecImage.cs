// Overview
// --------
// The exec of an in-place upgrade, and its other end. The running image writes the state document into a memfd,
// clears FD_CLOEXEC on exactly the fds that must cross (listeners, notify, handoff and control sockets, handoff
// connections, output pipes, control connections waiting for their answer, the memfd) and execs the new binary
// with the environment the supervisor was started with plus GSUPERVISOR_UPGRADE_STATE=<memfd>, and
// GSUPERVISOR_UPGRADE_FALLBACK=<fd of the running binary>. It is called on
// the main thread, which spawned every child: execve ends the other threads, and a child's parent-death signal
// belongs to the thread that spawned it. The signals the supervisor handles are blocked in that thread, and
// execve keeps the mask and the pending set, so what arrives from here on waits for the new image.
// If execve fails, everything is put back as it was and the old image goes on.
//
// If the new image cannot take over (it passed its check, but then cannot open its exec helper, say), it does not
// exit, which would end every child through the parent-death signal: it execs the earlier binary again, from the
// fd it was handed, with the same state and GSUPERVISOR_UPGRADE_FAILED=<why>, and the earlier image resumes as if
// its exec had failed (ReturnToEarlierImage). Everything here is plain libc, so it works when nothing else loads.

using System.Globalization;
using System.Text;
using GSupervisor.Core;
using GSupervisor.Daemon.Os;

namespace GSupervisor.Daemon.Upgrade;

internal static unsafe class ExecImage
{
    public const string StateVariable = "GSUPERVISOR_UPGRADE_STATE";
    public const string FallbackVariable = "GSUPERVISOR_UPGRADE_FALLBACK";
    public const string FailedVariable = "GSUPERVISOR_UPGRADE_FAILED";

    /// <summary>Why the upgrade this image resumed from did not happen, when it is an earlier image the new one returned to.</summary>
    public static string? FailedUpgrade => Environment.GetEnvironmentVariable(FailedVariable);

    /// <summary>Replaces this process's image with <paramref name="path"/>; returns only if that failed, with errno.</summary>
    public static int Exec(string path, IReadOnlyList<string> argv, IReadOnlyList<int> crossing, byte[] state)
    {
        var self = Libc.open("/proc/self/exe", Libc.O_RDONLY); // without O_CLOEXEC: the way back, should the new image fail
        try
        {
            return Exec(path, argv, [.. crossing, .. self >= 0 ? [self] : Array.Empty<int>()], state,
                self >= 0 ? [$"{FallbackVariable}={self.ToString(CultureInfo.InvariantCulture)}"] : []);
        }
        finally
        {
            if (self >= 0) Libc.close(self);
        }
    }

    /// <summary>
    /// In a new image that cannot take over: execs the earlier binary again with <paramref name="state"/>, clearing
    /// FD_CLOEXEC on <paramref name="crossing"/> (what the take-over had marked). Returns errno if it could not.
    /// </summary>
    public static int ReturnToEarlierImage(byte[] state, IReadOnlyList<int> crossing, string why, IReadOnlyList<string> argv)
    {
        if (!int.TryParse(Environment.GetEnvironmentVariable(FallbackVariable), NumberStyles.None, CultureInfo.InvariantCulture, out var fd))
            return ErrorNumbers.ENOENT;
        return Exec($"/proc/self/fd/{fd.ToString(CultureInfo.InvariantCulture)}", argv, crossing, state, [$"{FailedVariable}={why.Replace('\n', ' ')}"]);
    }

    /// <summary>The environment the supervisor was started with, less what an upgrade added to it: what the next image (or the check) gets.</summary>
    public static IEnumerable<string> SupervisorEnvironment() =>
        ProcessEnvironment.Read().Where(e => e.Key is not (StateVariable or FallbackVariable or FailedVariable)).Select(e => $"{e.Key}={e.Value}");

    /// <summary>A new image that took over no longer needs the way back.</summary>
    public static void DropFallback()
    {
        if (int.TryParse(Environment.GetEnvironmentVariable(FallbackVariable), NumberStyles.None, CultureInfo.InvariantCulture, out var fd))
            Libc.close(fd);
    }

    private static int Exec(string path, IReadOnlyList<string> argv, IReadOnlyList<int> crossing, byte[] state, IReadOnlyList<string> extraEnvironment)
    {
        var memfd = Libc.memfd_create("gsupervisor-upgrade-state", 0); // without MFD_CLOEXEC: it crosses
        if (memfd < 0) return ErrorNumbers.Last;
        try
        {
            if (!Libc.WriteAll(memfd, state) || Libc.lseek(memfd, 0, 0 /* SEEK_SET */) != 0)
                return ErrorNumbers.Last is var e && e != 0 ? e : ErrorNumbers.EINVAL;
            var environment = SupervisorEnvironment()
                .Append($"{StateVariable}={memfd.ToString(CultureInfo.InvariantCulture)}").Concat(extraEnvironment).ToList();
            using var nativeArgv = new NativeStringArray(argv);
            using var nativeEnvironment = new NativeStringArray(environment);
            var nativePath = Encoding.UTF8.GetBytes(path + "\0");
            // Nothing between clearing the flags and putting them back can throw.
            foreach (var fd in crossing) Libc.SetCloseOnExec(fd, false);
            fixed (byte* p = nativePath) Libc.execve(p, nativeArgv.Pointer, nativeEnvironment.Pointer);
            var errno = ErrorNumbers.Last;
            foreach (var fd in crossing) Libc.SetCloseOnExec(fd, true);
            return errno;
        }
        finally
        {
            Libc.close(memfd);
        }
    }

    /// <summary>
    /// In a new image: the state document an earlier image left in the memfd named by GSUPERVISOR_UPGRADE_STATE
    /// (read and closed), or null when this process was not started by an in-place upgrade.
    /// </summary>
    /// <exception cref="UpgradeStateException">The variable is there but names no readable state.</exception>
    public static byte[]? TakeState()
    {
        if (Environment.GetEnvironmentVariable(StateVariable) is not { Length: > 0 } text) return null;
        if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var fd))
            throw new UpgradeStateException($"{StateVariable}='{text}' is not an fd number");
        using var stream = new MemoryStream();
        var buffer = new byte[64 * 1024];
        while (true)
        {
            int n;
            fixed (byte* b = buffer) n = Libc.read(fd, b, buffer.Length);
            if (n < 0)
                throw new UpgradeStateException($"cannot read the upgrade state from fd {fd}: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
            if (n == 0) break;
            stream.Write(buffer, 0, n);
        }
        Libc.close(fd);
        return stream.ToArray();
    }

    /// <summary>The fds a new image took over come without FD_CLOEXEC (they crossed); it goes back on, so no later exec leaks them.</summary>
    public static void MarkCloseOnExec(IEnumerable<int> fds)
    {
        foreach (var fd in fds) Libc.SetCloseOnExec(fd, true);
    }
}
