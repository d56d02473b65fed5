using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

/// <summary>
/// Writes to an inherited fd with plain write(2). FileStream would keep its own offset and pwrite at it,
/// overwriting the output of children that share the same file (e.g. 2>log); and Console's streams would
/// initialise the runtime's terminal handling (see Reaper).
/// </summary>
internal sealed unsafe class FdWriteStream(int fd) : WriteOnlyStream
{
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            var written = 0;
            while (written < buffer.Length)
            {
                var n = Syscall.write(fd, p + written, (ulong)(buffer.Length - written));
                if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
                if (n <= 0) return; // stderr closed or full: logging must never take the supervisor down
                written += (int)n;
            }
        }
    }
}

/// <summary>A stream that only writes: everything but Write(ReadOnlySpan) is answered here once.</summary>
internal abstract class WriteOnlyStream : Stream
{
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public abstract override void Write(ReadOnlySpan<byte> buffer);
}
