using System.Runtime.InteropServices;

namespace GSupervisor.Core;

/// <summary>
/// The ancillary data (control messages) of a message received on a Unix socket, parsed from the bytes recvmsg
/// left in its control buffer: passed fds (SCM_RIGHTS) and the sender's credentials (SCM_CREDENTIALS). One parser
/// for the supervisor's notify socket and the client library's handoff; Linux's 64-bit layout (a cmsghdr is an
/// 8-byte length, then level and type as ints; each message is aligned to 8 bytes).
/// </summary>
public static class ControlMessages
{
    public const int SOL_SOCKET = 1, SCM_RIGHTS = 1, SCM_CREDENTIALS = 2;
    private const int HeaderSize = 16;

    /// <summary>The sender's pid, uid and gid (struct ucred).</summary>
    public readonly record struct Credentials(int Pid, int Uid, int Gid);

    /// <summary>Every fd and the credentials found in <paramref name="control"/> (the filled part of the buffer only).</summary>
    public static (List<int> Fds, Credentials? Sender) Parse(ReadOnlySpan<byte> control)
    {
        var fds = new List<int>();
        Credentials? sender = null;
        var offset = 0;
        while (offset + HeaderSize <= control.Length)
        {
            var length = MemoryMarshal.Read<ulong>(control[offset..]);
            if (length < HeaderSize || length > (ulong)(control.Length - offset)) break;
            var level = MemoryMarshal.Read<int>(control[(offset + 8)..]);
            var type = MemoryMarshal.Read<int>(control[(offset + 12)..]);
            var data = control.Slice(offset + HeaderSize, (int)length - HeaderSize);
            if (level == SOL_SOCKET && type == SCM_RIGHTS)
                for (var i = 0; i + sizeof(int) <= data.Length; i += sizeof(int))
                    fds.Add(MemoryMarshal.Read<int>(data[i..]));
            else if (level == SOL_SOCKET && type == SCM_CREDENTIALS && data.Length >= 12)
                sender = new Credentials(MemoryMarshal.Read<int>(data), MemoryMarshal.Read<int>(data[4..]), MemoryMarshal.Read<int>(data[8..]));
            offset += (int)((length + 7) & ~7UL);
        }
        return (fds, sender);
    }
}
