// Faults TestChild can inject on request: dying by a signal, and sending garbage to the supervisor's sockets.

using System.Net.Sockets;
using System.Runtime.InteropServices;

internal static partial class Faults
{
    [LibraryImport("libc", EntryPoint = "kill")]
    private static partial int Kill(int pid, int signal);

    /// <summary>Dies by <paramref name="signal"/> with its default action (SIGKILL, SIGSEGV, SIGABRT...).</summary>
    public static void DieBySignal(int signal)
    {
        // The runtime handles SIGSEGV and SIGABRT itself; restore the default action first so the kernel ends us.
        // And no core dump: a .NET core is hundreds of MB, slow to write under systemd-coredump or apport.
        Prctl(PR_SET_DUMPABLE, 0);
        Signal(signal, 0);
        Kill(Environment.ProcessId, signal);
        // kill(2) delivers an unblocked signal to the caller before it returns: reaching here is a bug.
        throw new InvalidOperationException($"still alive after signal {signal}");
    }

    [LibraryImport("libc", EntryPoint = "_exit")]
    private static partial void ExitImmediately(int code);

    /// <summary>
    /// Exits with <paramref name="code"/> at once, as a crash does: no shutdown in which the accept loops take more
    /// connections they will never answer (Environment.Exit runs handlers while other threads go on).
    /// </summary>
    public static void Crash(int code)
    {
        ExitImmediately(code);
        throw new InvalidOperationException("still alive after _exit");
    }

    /// <summary>Completes when <paramref name="path"/> exists: an inotify watch, no polling.</summary>
    public static Task FileCreated(string path)
    {
        var created = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var watcher = new FileSystemWatcher(Path.GetDirectoryName(path)!, Path.GetFileName(path)) { NotifyFilter = NotifyFilters.FileName };
        watcher.Created += (_, _) => created.TrySetResult();
        watcher.EnableRaisingEvents = true;
        if (File.Exists(path)) created.TrySetResult(); // made before the watch began
        created.Task.ContinueWith(_ => watcher.Dispose(), TaskScheduler.Default);
        return created.Task;
    }

    private const int PR_SET_DUMPABLE = 4;

    [LibraryImport("libc", EntryPoint = "prctl")]
    private static partial int Prctl(int option, nuint value);

    [LibraryImport("libc", EntryPoint = "signal")]
    private static partial nint Signal(int signal, nint handler);

    /// <summary>
    /// Sends <paramref name="count"/> random datagrams (0 to 64 KiB, some valid-looking, some binary, some with
    /// NULs) to NOTIFY_SOCKET, and random bytes, lines of every size and an oversized line to the handoff socket.
    /// </summary>
    public static void FuzzSupervisorSockets(int count, int seed)
    {
        Console.Error.WriteLine($"TestChild: fuzzing the supervisor's sockets with {count} messages, seed {seed}");
        var random = new Random(seed);
        var notify = Environment.GetEnvironmentVariable("NOTIFY_SOCKET");
        if (!string.IsNullOrEmpty(notify))
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            socket.SendBufferSize = 256 * 1024;
            var endpoint = new UnixDomainSocketEndPoint(notify);
            for (var i = 0; i < count; i++)
            {
                var message = RandomMessage(random, i);
                try
                {
                    socket.SendTo(message, endpoint);
                }
                catch (SocketException)
                {
                    // EMSGSIZE for the largest ones: the kernel refused them, which is fine for a fuzzer
                }
            }
        }
        var handoff = Environment.GetEnvironmentVariable("GSUPERVISOR_HANDOFF");
        if (string.IsNullOrEmpty(handoff)) return;
        for (var c = 0; c < 8; c++)
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.Connect(new UnixDomainSocketEndPoint(handoff));
                socket.Receive(new byte[512]); // the greeting: from here on the supervisor reads what we send
                for (var i = 0; i < count / 8; i++) socket.Send(RandomMessage(random, i));
                socket.Send(new byte[64 * 1024]); // one line far beyond the limit: the supervisor must cut us off
            }
            catch (SocketException)
            {
                // cut off by the supervisor (an oversized or broken line): what it should do
            }
        }
    }

    private static byte[] RandomMessage(Random random, int i)
    {
        switch (i % 5)
        {
            case 0: // looks like sd_notify, with random keys and values
                var text = string.Join('\n', Enumerable.Range(0, random.Next(1, 20)).Select(_ =>
                    $"{(random.Next(3) == 0 ? "STATUS" : RandomWord(random))}={RandomWord(random)}"));
                return System.Text.Encoding.UTF8.GetBytes(text + "\n");
            case 1: // random binary, small
                return RandomBytes(random, random.Next(0, 512));
            case 2: // a READY=1 in a broken message (NUL, invalid UTF-8), which must not count
                return [.. "READY=1"u8.ToArray(), 0, 0xff, 0xfe, (byte)'\n'];
            case 3: // large, up to 64 KiB (the limit is 4 KiB)
                return RandomBytes(random, random.Next(4000, 64 * 1024));
            default: // newline storms
                return Enumerable.Repeat((byte)'\n', random.Next(1, 2000)).ToArray();
        }
    }

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    private static string RandomWord(Random random) =>
        new(Enumerable.Range(0, random.Next(0, 40)).Select(_ => (char)random.Next(32, 127)).Where(c => c != '\n').ToArray());
}
