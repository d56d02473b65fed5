using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

/// <summary>Writing to a shared fd such as our stdout or stderr, whatever mode others put it in.</summary>
internal static unsafe class Fd
{
    /// <summary>
    /// Writes all of <paramref name="bytes"/> with write(2), again after EINTR, and after EAGAIN once poll says
    /// the fd takes bytes (some other process set O_NONBLOCK on the shared file). Returns how many bytes were
    /// written: fewer only when the fd is closed or broken.
    /// </summary>
    public static int WriteAll(int fd, ReadOnlySpan<byte> bytes)
    {
        var written = 0;
        fixed (byte* p = bytes)
        {
            while (written < bytes.Length)
            {
                var n = Syscall.write(fd, p + written, (ulong)(bytes.Length - written));
                if (n > 0)
                {
                    written += (int)n;
                    continue;
                }
                var errno = n < 0 ? ErrorNumbers.Last : 0;
                if (errno == ErrorNumbers.EINTR) continue;
                if (errno == ErrorNumbers.EAGAIN && WaitWritable(fd)) continue;
                break;
            }
        }
        return written;
    }

    /// <summary>Blocks in poll until <paramref name="fd"/> has input (or an error or hang-up to report): the wait before an intake.</summary>
    public static void WaitReadable(int fd)
    {
        var fds = new[] { new Pollfd { fd = fd, events = PollEvents.POLLIN } };
        while (Syscall.poll(fds, 1, -1) < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR)
        {
        }
    }

    /// <summary>Waits in poll, at most <paramref name="timeout"/>, until <paramref name="fd"/> has input (or an error or hang-up); false on timeout.</summary>
    public static bool WaitReadable(int fd, TimeSpan timeout) => Wait(fd, PollEvents.POLLIN, timeout);

    /// <summary>Waits in poll, at most <paramref name="timeout"/>, until <paramref name="fd"/> takes bytes; false on timeout.</summary>
    public static bool WaitWritable(int fd, TimeSpan timeout) => Wait(fd, PollEvents.POLLOUT, timeout);

    private static bool Wait(int fd, PollEvents events, TimeSpan timeout)
    {
        var fds = new[] { new Pollfd { fd = fd, events = events } };
        var deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            var left = (int)Math.Max(0, deadline - Environment.TickCount64);
            var n = Syscall.poll(fds, 1, left);
            if (n > 0) return true;
            if (n == 0 || ErrorNumbers.Last != ErrorNumbers.EINTR) return false;
        }
    }

    /// <summary>Blocks in poll until <paramref name="fd"/> takes bytes, as a blocking write would; false if it never will.</summary>
    private static bool WaitWritable(int fd)
    {
        var fds = new[] { new Pollfd { fd = fd, events = PollEvents.POLLOUT } };
        while (true)
        {
            var n = Syscall.poll(fds, 1, -1);
            if (n > 0) return (fds[0].revents & (PollEvents.POLLERR | PollEvents.POLLHUP | PollEvents.POLLNVAL)) == 0;
            if (n < 0 && ErrorNumbers.Last != ErrorNumbers.EINTR) return false;
        }
    }
}
