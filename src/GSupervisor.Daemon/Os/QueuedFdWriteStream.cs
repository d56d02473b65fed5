// Overview
// --------
// The daemon's log output. The event loop must never wait for its stderr: a terminal paused with Ctrl+S, a
// pipe nobody reads or a journal that applies backpressure would otherwise freeze reloads, control requests
// and restarts. Writes go into a bounded in-memory buffer that one thread drains with write(2). When the
// buffer is full, whole lines are dropped (a line is never cut), counted, and reported with one line as soon
// as stderr takes bytes again. The children's own output does not pass through here (see OutputRelay).
//
// The writer hands write(2) at most PIPE_BUF bytes ending at a line end where it can, so on a pipe the
// supervisor's lines do not interleave with the children's output that the relay writes to the same fd. If
// some other process set O_NONBLOCK on the shared stderr, EAGAIN is met with poll(POLLOUT), not data loss.

using System.Text;

namespace GSupervisor.Daemon.Os;

internal sealed class QueuedFdWriteStream : WriteOnlyStream
{
    private const int PipeBuf = 4096; // writes up to this size are atomic on a pipe

    private readonly int _fd;
    private readonly int _capacity;
    private readonly object _lock = new(); // Monitor.Wait/PulseAll need a plain object
    private readonly Queue<byte[]> _pending = new();
    private int _queuedBytes; // pending plus the chunk being written: what counts against the capacity
    private bool _writing;
    private bool _atLineStart = true;
    private bool _droppingLine;
    private long _droppedLines;

    public QueuedFdWriteStream(int fd, int capacityBytes = 256 * 1024)
    {
        _fd = fd;
        _capacity = capacityBytes;
        new Thread(WriteLoop) { IsBackground = true, Name = $"log-writer-{fd}" }.Start();
    }

    /// <summary>Lines dropped so far because the buffer was full or stderr was gone.</summary>
    public long DroppedLines
    {
        get { lock (_lock) return _droppedLines; }
    }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (buffer.IsEmpty) return;
        var endsLine = buffer[^1] == (byte)'\n';
        lock (_lock)
        {
            // Decide at the start of a line whether the whole line goes or stays, so a line is never cut.
            if (_atLineStart) _droppingLine = _queuedBytes + buffer.Length > _capacity;
            _atLineStart = endsLine;
            if (_droppingLine)
            {
                _droppedLines += buffer.Count((byte)'\n');
                return;
            }
            _pending.Enqueue(buffer.ToArray());
            _queuedBytes += buffer.Length;
            Monitor.PulseAll(_lock);
        }
    }

    /// <summary>Waits (at most <paramref name="timeout"/>) until everything queued has been written.</summary>
    public void Drain(TimeSpan timeout)
    {
        var deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        lock (_lock)
        {
            while (_pending.Count > 0 || _writing)
            {
                var left = deadline - Environment.TickCount64;
                if (left <= 0) return;
                Monitor.Wait(_lock, TimeSpan.FromMilliseconds(left)); // woken by the writer after each write
            }
        }
    }

    private void WriteLoop()
    {
        long reportedDrops = 0;
        while (true)
        {
            byte[] chunk;
            lock (_lock)
            {
                while (_pending.Count == 0) Monitor.Wait(_lock);
                var size = _pending.Sum(p => p.Length);
                chunk = new byte[size];
                var at = 0;
                while (_pending.TryDequeue(out var piece))
                {
                    piece.CopyTo(chunk, at);
                    at += piece.Length;
                }
                _writing = true;
            }
            var unwritten = WriteAll(chunk);
            long drops;
            lock (_lock)
            {
                _droppedLines += unwritten.Count((byte)'\n');
                _queuedBytes -= chunk.Length;
                drops = _droppedLines;
            }
            if (drops > reportedDrops)
            {
                WriteAll(Encoding.UTF8.GetBytes(
                    $"gsupervisor: {drops - reportedDrops} log lines dropped: stderr was not taking output fast enough\n"));
                reportedDrops = drops;
            }
            lock (_lock)
            {
                _writing = false;
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>Writes <paramref name="bytes"/> in line-aligned pieces of at most PIPE_BUF; returns what could not be written.</summary>
    private ReadOnlySpan<byte> WriteAll(byte[] bytes)
    {
        var written = 0;
        while (written < bytes.Length)
        {
            var piece = Math.Min(PipeBuf, bytes.Length - written);
            if (piece == PipeBuf)
            {
                var lineEnd = bytes.AsSpan(written, piece).LastIndexOf((byte)'\n');
                if (lineEnd >= 0) piece = lineEnd + 1;
            }
            var n = Fd.WriteAll(_fd, bytes.AsSpan(written, piece));
            written += n;
            if (n < piece) return bytes.AsSpan(written); // stderr closed or broken: the log is lost, the supervisor goes on
        }
        return [];
    }
}
