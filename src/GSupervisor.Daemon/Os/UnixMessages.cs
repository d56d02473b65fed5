// Overview
// --------
// Ancillary-data messages on Unix sockets through Mono.Posix: sending fds with SCM_RIGHTS (handoff socket)
// and receiving a datagram together with its sender's SCM_CREDENTIALS (notify socket). Of the fds a peer
// sends, at most one is kept until the event loop has handled the datagram (sd_notify's BARRIER=1 sends a pipe
// end and waits for it to close: closing it only then tells `systemd-notify` that its READY=1 has been acted
// on, which keeps it alive, and attributable to its generation, until then). The rest are closed at once, so
// a child cannot make the supervisor hold its files or exhaust its fds.

using System.Runtime.InteropServices;
using GSupervisor.Core;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

/// <summary>
/// One received datagram and who sent it (pid and uid as the kernel reports them). <see cref="HeldFd"/> (or -1)
/// is the one fd kept open until the datagram has been handled; call <see cref="Release"/> then.
/// </summary>
internal sealed record ReceivedDatagram(byte[] Data, int SenderPid, int SenderUid, bool Truncated, int HeldFd, int FdsDiscarded)
{
    public void Release()
    {
        if (HeldFd >= 0) Syscall.close(HeldFd);
    }
}

internal static class UnixMessages
{
    private const int MaxFdsInMessage = 253; // SCM_MAX_FD

    /// <summary>Sends <paramref name="data"/> with <paramref name="fds"/> attached as SCM_RIGHTS; returns errno or 0.</summary>
    public static int SendWithFds(int socket, byte[] data, IReadOnlyList<int> fds, bool dontWait)
    {
        var dataHandle = GCHandle.Alloc(data, GCHandleType.Pinned);
        try
        {
            var msg = new Msghdr
            {
                msg_iov = [new Iovec { iov_base = dataHandle.AddrOfPinnedObject(), iov_len = (ulong)data.Length }],
                msg_iovlen = 1,
            };
            if (fds.Count > 0)
            {
                var payload = (ulong)(fds.Count * sizeof(int));
                msg.msg_control = new byte[Syscall.CMSG_SPACE(payload)];
                msg.msg_controllen = msg.msg_control.Length;
                var header = new Cmsghdr
                {
                    cmsg_len = (long)Syscall.CMSG_LEN(payload),
                    cmsg_level = UnixSocketProtocol.SOL_SOCKET,
                    cmsg_type = UnixSocketControlMessage.SCM_RIGHTS,
                };
                var offset = Syscall.CMSG_FIRSTHDR(msg);
                header.WriteToBuffer(msg, offset);
                var dataOffset = Syscall.CMSG_DATA(msg, offset);
                for (var i = 0; i < fds.Count; i++)
                    BitConverter.TryWriteBytes(msg.msg_control.AsSpan((int)dataOffset + i * sizeof(int)), fds[i]);
            }
            var flags = MessageFlags.MSG_NOSIGNAL | (dontWait ? MessageFlags.MSG_DONTWAIT : 0);
            while (true)
            {
                var sent = Syscall.sendmsg(socket, msg, flags);
                if (sent >= 0) return sent == data.Length ? 0 : SendRest(socket, data, (int)sent, flags);
                var errno = ErrorNumbers.Last;
                if (errno != ErrorNumbers.EINTR) return errno;
            }
        }
        finally
        {
            dataHandle.Free();
        }
    }

    /// <summary>The fds went with the first bytes; a short write sends the rest plainly.</summary>
    private static int SendRest(int socket, byte[] data, int offset, MessageFlags flags)
    {
        while (offset < data.Length)
        {
            var n = Syscall.send(socket, data[offset..], (ulong)(data.Length - offset), flags);
            if (n < 0 && ErrorNumbers.Last == ErrorNumbers.EINTR) continue;
            if (n <= 0) return n < 0 ? ErrorNumbers.Last : ErrorNumbers.EPIPE;
            offset += (int)n;
        }
        return 0;
    }

    /// <summary>Takes one datagram without waiting; returns null with <paramref name="errno"/> set (EAGAIN: none there).</summary>
    public static ReceivedDatagram? ReceiveWithCredentials(int socket, byte[] buffer, out int errno)
    {
        var handle = GCHandle.Alloc(buffer, GCHandleType.Pinned);
        try
        {
            var msg = new Msghdr
            {
                msg_iov = [new Iovec { iov_base = handle.AddrOfPinnedObject(), iov_len = (ulong)buffer.Length }],
                msg_iovlen = 1,
                msg_control = new byte[Syscall.CMSG_SPACE(12) + Syscall.CMSG_SPACE(MaxFdsInMessage * sizeof(int))],
            };
            msg.msg_controllen = msg.msg_control.Length;
            long received;
            while (true)
            {
                received = Syscall.recvmsg(socket, msg, MessageFlags.MSG_CMSG_CLOEXEC | MessageFlags.MSG_DONTWAIT);
                if (received >= 0) break;
                errno = ErrorNumbers.Last;
                if (errno != ErrorNumbers.EINTR) return null;
            }
            errno = 0;
            var (fds, sender) = ControlMessages.Parse(msg.msg_control.AsSpan(0, (int)Math.Min(msg.msg_controllen, msg.msg_control.Length)));
            int pid = sender?.Pid ?? 0, uid = sender?.Uid ?? -1, held = -1, discarded = 0;
            foreach (var fd in fds)
            {
                if (held < 0)
                {
                    held = fd;
                    continue;
                }
                Syscall.close(fd);
                discarded++;
            }
            var truncated = (msg.msg_flags & MessageFlags.MSG_TRUNC) != 0 || (msg.msg_flags & MessageFlags.MSG_CTRUNC) != 0;
            return new ReceivedDatagram(buffer.AsSpan(0, (int)received).ToArray(), pid, uid, truncated, held, discarded);
        }
        finally
        {
            handle.Free();
        }
    }
}
