// Overview
// --------
// Children's stdout and stderr go through pipes that the supervisor relays, byte for byte, to its own
// stdout and stderr (the journal, under systemd), keeping the last few KiB of each generation's output. When
// a reload fails, `gsupervisor reload --wait` can then show what the new child said before it died.
//
// Two threads do it for every generation there will ever be: one owns an epoll set of all the stdout pipes
// and writes to fd 1, the other the same for the stderr pipes and fd 2. So the thread count and the memory do
// not grow with reloads, and a stdout nobody reads holds up only the children's stdout, as if they wrote to
// it themselves (backpressure: a full pipe makes the child wait). A pipe is dropped from its set at end of
// file, when the generation and all its descendants have closed it.

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
    private int _openPipes;
    private readonly ManualResetEventSlim _closed;

    public OutputTail(int generation, int openPipes = 2, ReadOnlySpan<byte> carried = default)
    {
        Generation = generation;
        _openPipes = openPipes;
        _closed = new ManualResetEventSlim(openPipes == 0);
        Append(carried);
    }

    /// <summary>The generation whose output this is.</summary>
    public int Generation { get; }

    /// <summary>The bytes kept, oldest first (what an in-place upgrade carries).</summary>
    public byte[] Bytes()
    {
        lock (_lock)
        {
            var length = (int)Math.Min(_written, Capacity);
            var copy = new byte[length];
            for (var i = 0; i < length; i++) copy[i] = _buffer[(_written - length + i) % Capacity];
            return copy;
        }
    }

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
        var text = Encoding.UTF8.GetString(Bytes()).TrimEnd('\n');
        var all = text.Split('\n');
        return string.Join('\n', all.Skip(Math.Max(0, all.Length - lines)));
    }
}

/// <summary>Relays every generation's stdout and stderr (see the overview). One per supervisor.</summary>
internal sealed class OutputRelay(IntakeGate gate)
{
    private readonly RelayTarget _stdout = new(1, "relay-stdout", gate);
    private readonly RelayTarget _stderr = new(2, "relay-stderr", gate);

    /// <summary>
    /// Every pipe still relayed, by the tail it feeds: (tail, stdout read end or -1, stderr read end or -1). All of
    /// them, of generations long gone from the loop's view too (a daemonized grandchild may still write to one).
    /// Read with the gate closed.
    /// </summary>
    public List<(OutputTail Tail, int Stdout, int Stderr)> Pipes()
    {
        var stdout = _stdout.Sources();
        var stderr = _stderr.Sources();
        return stdout.Keys.Union(stderr.Keys)
            .Select(tail => (tail, stdout.GetValueOrDefault(tail, -1), stderr.GetValueOrDefault(tail, -1))).ToList();
    }

    /// <summary>Relays pipes an earlier image made (an in-place upgrade); -1 for one that had reached end of file.</summary>
    public void Adopt(int stdoutRead, int stderrRead, OutputTail tail)
    {
        if (stdoutRead >= 0) _stdout.Add(stdoutRead, tail);
        if (stderrRead >= 0) _stderr.Add(stderrRead, tail);
    }

    /// <summary>Makes the two pipes of a new generation: (child's stdout write end, child's stderr write end, tail).</summary>
    public (int StdoutWrite, int StderrWrite, OutputTail Tail) Start(int generation)
    {
        var tail = new OutputTail(generation);
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
        try
        {
            _stdout.Add(stdout.Read, tail);
        }
        catch
        {
            // Add closed stdout's read end; the rest is ours to close.
            foreach (var fd in new[] { stdout.Write, stderr.Read, stderr.Write }) Syscall.close(fd);
            throw;
        }
        try
        {
            _stderr.Add(stderr.Read, tail);
        }
        catch
        {
            // The stdout relay sees end of file once its write end is closed, and drops the pipe then.
            Syscall.close(stdout.Write);
            Syscall.close(stderr.Write);
            throw;
        }
        return (stdout.Write, stderr.Write, tail);
    }

    private static (int Read, int Write) Pipe()
    {
        var fds = new int[2];
        if (Libc.pipe2(fds, Libc.O_CLOEXEC) != 0)
            throw new SpawnException(ErrorNumbers.Last, $"cannot create an output pipe: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
        return (fds[0], fds[1]);
    }

    /// <summary>One target fd (1 or 2), the read ends of the pipes that go to it, and the thread that moves the bytes.</summary>
    private sealed unsafe class RelayTarget
    {
        private const int MaxEvents = 16;
        private readonly int _targetFd;
        private readonly int _epoll;
        private readonly Lock _lock = new();
        private readonly Dictionary<int, OutputTail> _sources = [];
        private readonly IntakeGate _gate;

        public RelayTarget(int targetFd, string threadName, IntakeGate gate)
        {
            _targetFd = targetFd;
            _gate = gate;
            _epoll = Libc.epoll_create1(Libc.EPOLL_CLOEXEC);
            if (_epoll < 0) throw new StartupException(ExitCodes.OsError, $"epoll_create1: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
            new Thread(Loop) { IsBackground = true, Name = threadName }.Start();
        }

        public Dictionary<OutputTail, int> Sources()
        {
            lock (_lock) return _sources.ToDictionary(pair => pair.Value, pair => pair.Key); // a tail is equal only to itself
        }

        public void Add(int readFd, OutputTail tail)
        {
            lock (_lock) _sources[readFd] = tail;
            if (Libc.EpollAdd(_epoll, readFd) != 0)
            {
                var errno = ErrorNumbers.Last;
                lock (_lock) _sources.Remove(readFd);
                Syscall.close(readFd);
                tail.PipeClosed();
                throw new SpawnException(errno, $"cannot watch an output pipe: {ErrorNumbers.Describe(errno)}");
            }
        }

        private void Loop()
        {
            var buffer = new byte[64 * 1024];
            var events = stackalloc byte[MaxEvents * Libc.EpollEventBytes];
            while (true)
            {
                var ready = Libc.epoll_wait(_epoll, events, MaxEvents, -1);
                if (ready < 0)
                {
                    if (ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
                    Libc.WriteLine(2, $"gsupervisor: output relay stopped: epoll_wait: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
                    return;
                }
                using (_gate.Enter())
                    for (var i = 0; i < ready; i++)
                        Relay(Libc.EpollEventFd(events, i), buffer);
            }
        }

        /// <summary>One read from a pipe that is readable (or at end of file), and its bytes written on.</summary>
        private void Relay(int readFd, byte[] buffer)
        {
            OutputTail? tail;
            lock (_lock) _sources.TryGetValue(readFd, out tail);
            if (tail is null) return;
            long n;
            fixed (byte* p = buffer)
                while ((n = Syscall.read(readFd, p, (ulong)buffer.Length)) < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR)
                {
                }
            if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EAGAIN) return; // nothing after all (a spurious wake-up): epoll says when
            if (n <= 0)
            {
                // End of file (or a broken pipe): the generation and its descendants are done with it.
                Libc.EpollRemove(_epoll, readFd);
                lock (_lock) _sources.Remove(readFd);
                Syscall.close(readFd);
                tail.PipeClosed();
                return;
            }
            tail.Append(buffer.AsSpan(0, (int)n));
            // If our own stdout is gone the bytes are dropped, and the pipe is still drained so the child never blocks.
            Fd.WriteAll(_targetFd, buffer.AsSpan(0, (int)n));
        }
    }
}
