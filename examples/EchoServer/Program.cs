// A TCP echo server as a gsupervisor child, on GSupervisor.Client alone. It takes the listeners over the
// handoff socket, reports READY=1 once it accepts, and on SIGTERM stops accepting (the next generation
// takes new connections from the shared queue) while every open connection is served until its client
// closes it, so no echo is lost or cut. Outside gsupervisor it listens on 127.0.0.1:7007.

using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using GSupervisor.Client;

using var supervisor = GSupervisorClient.Connect();
var listeners = supervisor.Listeners.Select(l => l.Socket).ToList();
if (listeners.Count == 0)
{
    var own = new Socket(SocketType.Stream, ProtocolType.Tcp);
    own.Bind(new IPEndPoint(IPAddress.Loopback, 7007));
    own.Listen();
    listeners.Add(own);
    Console.Error.WriteLine("not under gsupervisor: listening on 127.0.0.1:7007");
}

using var stopping = new CancellationTokenSource();
void Stop(PosixSignalContext context)
{
    context.Cancel = true;
    stopping.Cancel();
}
using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
supervisor.DrainRequested.Register(stopping.Cancel); // the supervisor's word, whatever its --stop-signal
supervisor.SupervisorGone.Register(stopping.Cancel);

var connections = new List<Task>();
var accepting = listeners.Select(listener => Task.Run(async () =>
{
    while (true)
    {
        Socket connection;
        try
        {
            // Cancelling the accept leaves the listening socket, shared with the other generation, untouched.
            connection = await listener.AcceptAsync(stopping.Token);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        lock (connections) connections.Add(Echo(connection));
    }
})).ToList();

supervisor.NotifyReady();
await Task.WhenAll(accepting);
Task[] open;
lock (connections) open = connections.ToArray();
supervisor.NotifyStopping();
await Task.WhenAll(open); // each ends when its client closes; the supervisor's stop timeout bounds the wait
return 0;

static async Task Echo(Socket connection)
{
    using (connection)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            int n;
            while ((n = await connection.ReceiveAsync(buffer)) > 0)
                await connection.SendAsync(buffer.AsMemory(0, n));
            connection.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException)
        {
            // The client reset the connection: nothing left to echo to.
        }
    }
}
