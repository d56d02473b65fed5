// Overview
// --------
// Children's stdout and stderr go through pipes that the supervisor relays, byte for byte, to its own
// stdout and stderr (the journal, under systemd), keeping the last few KiB of each generation's output. When
// a reload fails, `gsupervisor reload --wait` can then show what the new child said before it died. One
// thread per pipe blocks in read(2); at end of file (the generation and all its descendants have closed it)
// the thread ends.

using System.Text;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

/// <summary>The last bytes a generation wrote to stdout and stderr, interleaved as they arrived.</summary>
internal sealed class OutputTail
{
    private const int Capacity = 8 * 1024;
    private readonly Lock _lock = new();
    private readonly byte[] _buffer = new byte[Capacity];
    private long _written;
    private int _openPipes = 2;
    private readonly ManualResetEventSlim _closed = new(false);

    public void Append(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            foreach (var b in data.Length > Capacity ? data[^Capacity..] : data)
                _buffer[_written++ % Capacity] = b;
        }
    }

    public void PipeClosed()
    {
        if (Interlocked.Decrement(ref _openPipes) == 0) _closed.Set();
    }

    /// <summary>Waits (briefly) until both pipes reached end of file, so the last words of a dead child are in.</summary>
    public void WaitForEnd(TimeSpan timeout) => _closed.Wait(timeout);

    /// <summary>The last <paramref name="lines"/> lines.</summary>
    public string LastLines(int lines)
    {
        byte[] copy;
        lock (_lock)
        {
            var length = (int)Math.Min(_written, Capacity);
            copy = new byte[length];
            for (var i = 0; i < length; i++) copy[i] = _buffer[(_written - length + i) % Capacity];
        }
        var text = Encoding.UTF8.GetString(copy).TrimEnd('\n');
        var all = text.Split('\n');
        return string.Join('\n', all.Skip(Math.Max(0, all.Length - lines)));
    }
}

internal static class OutputRelay
{
    /// <summary>Makes the two pipes of a new generation: (child's stdout write end, child's stderr write end, tail).</summary>
    public static (int StdoutWrite, int StderrWrite, OutputTail Tail) Start(int generation)
    {
        var tail = new OutputTail();
        var stdout = Pipe();
        (int Read, int Write) stderr;
        try
        {
            stderr = Pipe();
        }
        catch
        {
            Syscall.close(stdout.Read);
            Syscall.close(stdout.Write);
            throw;
        }
        Relay(stdout.Read, 1, tail, $"relay-{generation}-out");
        Relay(stderr.Read, 2, tail, $"relay-{generation}-err");
        return (stdout.Write, stderr.Write, tail);
    }

    private static (int Read, int Write) Pipe()
    {
        var fds = new int[2];
        if (Libc.pipe2(fds, Libc.O_CLOEXEC) != 0)
            throw new SpawnException(Libc.LastErrno, $"cannot create an output pipe: {ErrorNumbers.Describe(Libc.LastErrno)}");
        return (fds[0], fds[1]);
    }

    private static void Relay(int readFd, int targetFd, OutputTail tail, string name) =>
        new Thread(() => Loop(readFd, targetFd, tail)) { IsBackground = true, Name = name }.Start();

    private static unsafe void Loop(int readFd, int targetFd, OutputTail tail)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            while (true)
            {
                long n;
                fixed (byte* p = buffer) n = Syscall.read(readFd, p, (ulong)buffer.Length);
                if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
                if (n <= 0) return;
                tail.Append(buffer.AsSpan(0, (int)n));
                var written = 0;
                fixed (byte* p = buffer)
                {
                    while (written < n)
                    {
                        var w = Syscall.write(targetFd, p + written, (ulong)(n - written));
                        if (w < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
                        if (w <= 0) break; // our own stdout is gone: keep draining the child's pipe so it never blocks
                        written += (int)w;
                    }
                }
            }
        }
        finally
        {
            Syscall.close(readFd);
            tail.PipeClosed();
        }
    }
}
