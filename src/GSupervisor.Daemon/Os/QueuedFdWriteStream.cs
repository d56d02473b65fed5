// Overview
// --------
// The daemon's log output. The event loop must never wait for its stderr: a terminal paused with Ctrl+S, a
// pipe nobody reads or a journal that applies backpressure would otherwise freeze reloads, control requests
// and restarts. Writes go into a bounded in-memory buffer that one thread drains with write(2). When the
// buffer is full, whole lines are dropped (a line is never cut), counted, and reported with one line as soon
// as stderr takes bytes again. The children's own output does not pass through here (see OutputRelay).

using System.Text;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal sealed unsafe class QueuedFdWriteStream : Stream
{
    private readonly int _fd;
    private readonly int _capacity;
    private readonly object _lock = new(); // Monitor.Wait/PulseAll need a plain object
    private readonly Queue<byte[]> _pending = new();
    private int _pendingBytes;
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

    /// <summary>Lines dropped so far because the buffer was full.</summary>
    public long DroppedLines
    {
        get { lock (_lock) return _droppedLines; }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (buffer.IsEmpty) return;
        var endsLine = buffer[^1] == (byte)'\n';
        lock (_lock)
        {
            // Decide at the start of a line whether the whole line goes or stays, so a line is never cut.
            if (_atLineStart) _droppingLine = _pendingBytes + buffer.Length > _capacity;
            _atLineStart = endsLine;
            if (_droppingLine)
            {
                if (endsLine) _droppedLines++;
                return;
            }
            _pending.Enqueue(buffer.ToArray());
            _pendingBytes += buffer.Length;
            Monitor.PulseAll(_lock);
        }
    }

    /// <summary>Waits (at most <paramref name="timeout"/>) until everything queued has been written.</summary>
    public void Drain(TimeSpan timeout)
    {
        var deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        lock (_lock)
        {
            while (_pendingBytes > 0 || _writing)
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
                // Everything pending in one write: fewer syscalls, and lines stay whole against the children's output.
                chunk = new byte[_pendingBytes];
                var at = 0;
                while (_pending.TryDequeue(out var piece))
                {
                    piece.CopyTo(chunk, at);
                    at += piece.Length;
                }
                _pendingBytes = 0;
                _writing = true;
            }
            WriteAll(chunk);
            long drops;
            lock (_lock)
            {
                _writing = false;
                drops = _droppedLines;
                Monitor.PulseAll(_lock);
            }
            if (drops > reportedDrops)
            {
                WriteAll(Encoding.UTF8.GetBytes(
                    $"gsupervisor: {drops - reportedDrops} log lines dropped: stderr was not taking output fast enough\n"));
                reportedDrops = drops;
            }
        }
    }

    private void WriteAll(byte[] bytes)
    {
        fixed (byte* p = bytes)
        {
            var written = 0;
            while (written < bytes.Length)
            {
                var n = Syscall.write(_fd, p + written, (ulong)(bytes.Length - written));
                if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
                if (n <= 0) return; // stderr closed: the log is lost, the supervisor goes on
                written += (int)n;
            }
        }
    }

    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
