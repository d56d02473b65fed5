// Overview
// --------
// The few libc calls the client library needs, one LibraryImport each: recvmsg to take SCM_RIGHTS fds off
// the handoff socket, and fcntl to mark inherited fds close-on-exec. Layouts are those of 64-bit Linux.

using System.Runtime.InteropServices;
using GSupervisor.Core;

namespace GSupervisor.Client;

internal static unsafe partial class Native
{
    private const int SOL_SOCKET = 1;
    private const int MSG_CMSG_CLOEXEC = 0x40000000;
    private const int F_GETFD = 1;
    private const int F_SETFD = 2;
    private const int FD_CLOEXEC = 1;
    private const int EINTR = 4;

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVector
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MessageHeader
    {
        public void* Name;
        public uint NameLength;
        public IoVector* Vectors;
        public nuint VectorCount;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    private static partial nint recvmsg(int fd, MessageHeader* message, int flags);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int fcntl(int fd, int command, int argument);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    internal static partial int close(int fd);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static partial int getsockopt(int fd, int level, int name, int* value, uint* length);

    private const int SO_TYPE = 3;

    /// <summary>Whether <paramref name="fd"/> is an open socket (SO_TYPE answers only for sockets).</summary>
    public static bool IsSocket(int fd)
    {
        int type;
        uint length = sizeof(int);
        return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0;
    }

    /// <summary>Receives bytes and any SCM_RIGHTS fds (marked close-on-exec). Returns the byte count, 0 at end of file.</summary>
    public static int Receive(int socket, Span<byte> buffer, List<int> fds)
    {
        const int headerSize = 16; // cmsghdr on 64-bit: size_t len, int level, int type
        const int maxFds = 253;
        var control = stackalloc byte[headerSize + maxFds * sizeof(int) + 8];
        fixed (byte* data = buffer)
        {
            var vector = new IoVector { Base = data, Length = (nuint)buffer.Length };
            var message = new MessageHeader
            {
                Vectors = &vector,
                VectorCount = 1,
                Control = control,
                ControlLength = (nuint)(headerSize + maxFds * sizeof(int) + 8),
            };
            nint received;
            do
            {
                received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
            }
            while (received < 0 && Marshal.GetLastPInvokeError() == EINTR);
            if (received < 0)
                throw new IOException($"recvmsg on the handoff socket failed (errno {Marshal.GetLastPInvokeError()})");

            fds.AddRange(ControlMessages.Parse(new ReadOnlySpan<byte>(control, (int)message.ControlLength)).Fds);
            return (int)received;
        }
    }

    public static void SetCloseOnExec(int fd)
    {
        var flags = fcntl(fd, F_GETFD, 0);
        if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
            throw new IOException($"cannot mark fd {fd} close-on-exec (errno {Marshal.GetLastPInvokeError()})");
    }
}
