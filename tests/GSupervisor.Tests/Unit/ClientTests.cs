using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using GSupervisor.Client;
using GSupervisor.Core;

namespace GSupervisor.Tests.Unit;

/// <summary>GSupervisor.Client against real Unix sockets, with the environment passed in.</summary>
public partial class ClientTests
{
    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static unsafe partial nint SendMessage(int fd, void* message, int flags);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);

    /// <summary>Sends bytes with fds attached (SCM_RIGHTS), as the supervisor does.</summary>
    private static unsafe void SendWithFds(Socket socket, byte[] data, int[] fds)
    {
        var control = new byte[16 + 8 * ((fds.Length * 4 + 7) / 8)];
        BitConverter.TryWriteBytes(control.AsSpan(0), (long)(16 + fds.Length * 4));
        BitConverter.TryWriteBytes(control.AsSpan(8), 1);  // SOL_SOCKET
        BitConverter.TryWriteBytes(control.AsSpan(12), 1); // SCM_RIGHTS
        for (var i = 0; i < fds.Length; i++) BitConverter.TryWriteBytes(control.AsSpan(16 + 4 * i), fds[i]);
        fixed (byte* d = data)
        fixed (byte* c = control)
        {
            var iov = stackalloc nint[2] { (nint)d, data.Length };
            var msg = stackalloc nint[7] { 0, 0, (nint)iov, 1, (nint)c, control.Length, 0 };
            Assert.That(SendMessage((int)socket.Handle, msg, 0), Is.EqualTo((nint)data.Length));
        }
    }

    private static Dictionary<string, string> Env(params (string Key, string Value)[] pairs) =>
        pairs.ToDictionary(p => p.Key, p => p.Value);

    [Test]
    public void Not_supervised_without_the_variables()
    {
        using var client = GSupervisorClient.Connect(Env(), 123, new GSupervisorClientOptions());
        Assert.That(client.IsSupervised, Is.False);
        Assert.That(client.Listeners, Is.Empty);
        Assert.That(client.Source, Is.EqualTo(ListenerSource.None));
        client.NotifyReady(); // reporting to nobody is not an error
    }

    [Test]
    public void Takes_listeners_over_the_handoff_socket_with_names_and_close_on_exec()
    {
        using var dir = new Integration.TempDirectory();
        var path = dir.File("handoff");
        using var server = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        server.Bind(new UnixDomainSocketEndPoint(path));
        server.Listen();
        using var web = new TcpListener(IPAddress.Loopback, 0);
        using var admin = new TcpListener(IPAddress.Loopback, 0);
        web.Start();
        admin.Start();

        var serving = Task.Run(() =>
        {
            var connection = server.Accept();
            SendWithFds(connection, HandoffProtocol.EncodeGreeting(4, ["web", "admin"]),
                [(int)web.Server.Handle, (int)admin.Server.Handle]);
            var lines = new StringBuilder();
            var buffer = new byte[256];
            int n;
            while (!lines.ToString().Contains("STOPPING=1") && (n = connection.Receive(buffer)) > 0)
                lines.Append(Encoding.UTF8.GetString(buffer, 0, n));
            return (connection, lines.ToString());
        });

        using var client = GSupervisorClient.Connect(
            Env(("GSUPERVISOR_PID", "1"), ("GSUPERVISOR_HANDOFF", path), ("GSUPERVISOR_GENERATION", "4")), Environment.ProcessId,
            new GSupervisorClientOptions());
        Assert.That(client.IsSupervised, Is.True);
        Assert.That(client.Source, Is.EqualTo(ListenerSource.Handoff));
        Assert.That(client.Generation, Is.EqualTo(4));
        Assert.That(client.Listeners.Select(l => l.Name), Is.EqualTo(new[] { "web", "admin" }));
        foreach (var listener in client.Listeners)
            Assert.That(Fcntl(listener.Fd, 1 /* F_GETFD */, 0) & 1, Is.EqualTo(1), "FD_CLOEXEC set");
        Assert.That(((IPEndPoint)client.Listeners[0].Socket.LocalEndPoint!).Port, Is.EqualTo(((IPEndPoint)web.LocalEndpoint).Port),
            "the received fd is the same socket");

        client.NotifyStatus("warming\nup");
        client.NotifyReady();
        client.NotifyStopping();
        Assert.That(serving.Wait(TimeSpan.FromSeconds(10)), Is.True);
        var (connection, text) = serving.Result;
        Assert.That(text, Is.EqualTo("STATUS=warming up\nREADY=1\nSTOPPING=1\n"), "one sd_notify line each, newlines in values flattened");

        Assert.That(client.DrainRequested.IsCancellationRequested, Is.False);
        connection.Send("DRAIN\n"u8.ToArray());
        Assert.That(client.DrainRequested.WaitHandle.WaitOne(TimeSpan.FromSeconds(10)), Is.True, "DrainRequested fires on DRAIN");
        Assert.That(client.SupervisorGone.IsCancellationRequested, Is.False);
        connection.Dispose(); // the supervisor goes away
        Assert.That(client.SupervisorGone.WaitHandle.WaitOne(TimeSpan.FromSeconds(10)), Is.True, "SupervisorGone fires at end of file");
    }

    [Test]
    public void Refusal_by_the_supervisor_is_an_error_naming_the_reason()
    {
        using var dir = new Integration.TempDirectory();
        var path = dir.File("handoff");
        using var server = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        server.Bind(new UnixDomainSocketEndPoint(path));
        server.Listen();
        var refusing = Task.Run(() =>
        {
            using var c = server.Accept();
            c.Send(HandoffProtocol.EncodeRefusal("not a process of a running generation"));
        });
        var error = Assert.Throws<IOException>(() => GSupervisorClient.Connect(
            Env(("GSUPERVISOR_PID", "1"), ("GSUPERVISOR_HANDOFF", path)), Environment.ProcessId, new GSupervisorClientOptions()));
        Assert.That(error!.Message, Does.Contain("refused").And.Contain("not a process of a running generation"));
        refusing.Wait();
    }

    [Test]
    public void Without_handoff_readiness_goes_to_NOTIFY_SOCKET_as_a_datagram()
    {
        using var dir = new Integration.TempDirectory();
        var path = dir.File("notify");
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(path));
        using var client = GSupervisorClient.Connect(Env(("NOTIFY_SOCKET", path)), Environment.ProcessId, new GSupervisorClientOptions());
        client.NotifyReady();
        var buffer = new byte[64];
        notify.ReceiveTimeout = 10_000;
        var n = notify.Receive(buffer);
        Assert.That(Encoding.UTF8.GetString(buffer, 0, n), Is.EqualTo("READY=1\n"));
    }

    [Test]
    public void ReportFailure_sends_the_reason_and_WATCHDOG_trigger_in_one_datagram()
    {
        using var dir = new Integration.TempDirectory();
        var path = dir.File("notify");
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(path));
        using var client = GSupervisorClient.Connect(Env(("NOTIFY_SOCKET", path)), Environment.ProcessId, new GSupervisorClientOptions());
        client.ReportFailure("cache is empty\nand cold");
        var buffer = new byte[128];
        notify.ReceiveTimeout = 10_000;
        var n = notify.Receive(buffer);
        Assert.That(Encoding.UTF8.GetString(buffer, 0, n), Is.EqualTo("STATUS=cache is empty and cold\nWATCHDOG=trigger\n"));
    }

    [Test]
    public void Probation_lines_start_and_end_the_probation()
    {
        using var client = GSupervisorClient.Connect(Env(), Environment.ProcessId, new GSupervisorClientOptions());
        Assert.That(client.ProbationLeft, Is.EqualTo(TimeSpan.Zero));
        client.OnSupervisorLine("PROBATION ms=bogus");
        client.OnSupervisorLine("SOMETHING A LATER SUPERVISOR SAYS");
        Assert.That(client.ProbationStarted.IsCancellationRequested, Is.False);
        client.OnSupervisorLine("PROBATION ms=5000");
        Assert.That(client.ProbationStarted.IsCancellationRequested, Is.True);
        Assert.That(client.ProbationLeft, Is.GreaterThan(TimeSpan.FromSeconds(4)).And.LessThanOrEqualTo(TimeSpan.FromSeconds(5)));
        client.OnSupervisorLine("PROBATION_PASSED");
        Assert.That(client.ProbationPassed.IsCancellationRequested, Is.True);
        Assert.That(client.ProbationLeft, Is.EqualTo(TimeSpan.Zero));
        Assert.That(client.DrainRequested.IsCancellationRequested, Is.False);
    }

    [Test]
    public void LISTEN_FDS_for_another_pid_is_ignored()
    {
        // The systemd protocol: the variables are meant only for the process whose pid is LISTEN_PID.
        using var client = GSupervisorClient.Connect(Env(("LISTEN_FDS", "2"), ("LISTEN_PID", "1")), Environment.ProcessId, new GSupervisorClientOptions());
        Assert.That(client.Listeners, Is.Empty);
        Assert.That(client.IsSupervised, Is.False);
    }
}
