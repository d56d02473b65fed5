// Overview
// --------
// The exec of an in-place upgrade, and its other end. The running image writes the state document into a memfd,
// clears FD_CLOEXEC on exactly the fds that must cross (listeners, notify, handoff and control sockets, handoff
// connections, output pipes, control connections waiting for their answer, the memfd) and execs the new binary
// with the environment the supervisor was started with plus GSUPERVISOR_UPGRADE_STATE=<memfd>. It is called on
// the main thread, which spawned every child: execve ends the other threads, and a child's parent-death signal
// belongs to the thread that spawned it. The signals the supervisor handles are blocked in that thread, and
// execve keeps the mask and the pending set, so what arrives from here on waits for the new image.
// If execve fails, everything is put back as it was and the old image goes on.

using System.Globalization;
using System.Text;
using GSupervisor.Core;
using GSupervisor.Daemon.Os;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Upgrade;

internal static unsafe class ExecImage
{
    public const string StateVariable = "GSUPERVISOR_UPGRADE_STATE";

    /// <summary>Replaces this process's image with <paramref name="path"/>; returns only if that failed, with errno.</summary>
    public static int Exec(string path, IReadOnlyList<string> argv, IReadOnlyList<int> crossing, byte[] state)
    {
        var memfd = Libc.memfd_create("gsupervisor-upgrade-state", 0); // without MFD_CLOEXEC: it crosses
        if (memfd < 0) return ErrorNumbers.Last;
        try
        {
            if (Fd.WriteAll(memfd, state) != state.Length || Syscall.lseek(memfd, 0, SeekFlags.SEEK_SET) != 0)
                return ErrorNumbers.Last is var e && e != 0 ? e : ErrorNumbers.EINVAL;
            var environment = ProcessEnvironment.Read().Where(e => e.Key != StateVariable).Select(e => $"{e.Key}={e.Value}")
                .Append($"{StateVariable}={memfd.ToString(CultureInfo.InvariantCulture)}").ToList();
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
            Syscall.close(memfd);
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
        Syscall.close(fd);
        return stream.ToArray();
    }

    /// <summary>The fds a new image took over come without FD_CLOEXEC (they crossed); it goes back on, so no later exec leaks them.</summary>
    public static void MarkCloseOnExec(IEnumerable<int> fds)
    {
        foreach (var fd in fds) Libc.SetCloseOnExec(fd, true);
    }
}
