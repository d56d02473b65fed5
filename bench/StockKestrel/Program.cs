// The stock ASP.NET Core app that `make bench` runs under every strategy but the first: it uses nothing of
// gsupervisor, only what Kestrel itself offers, and answers GET / with the same short body as HelloKestrel.
// Where its listening socket comes from depends on who runs it:
//
//   LISTEN_FDS, LISTEN_PID        systemd or gsupervisor --no-inject: Kestrel's own UseSystemd() adopts fd 3;
//                                 under gsupervisor's startup hook (the default) the injected integration does
//   SERVER_STARTER_PORT           Server::Starter's start_server ("127.0.0.1:8080=3"): ListenHandle(3)
//   --bind HOST:PORT              binds the port itself (the stop-then-start restart)
//   --bind HOST:PORT --reuseport  binds it itself with SO_REUSEPORT, so a second copy can bind the same port
//                                 while the first still serves (the overlap strategy)
//
// Adopted sockets (the first two) are not owned by Kestrel and stay open in the supervisor on stop; a bound
// socket is Kestrel's own and is closed when the graceful stop begins. Stops gracefully on SIGTERM.

using System.Globalization;
using System.Net;
using System.Net.Sockets;

var bind = OptionValue(args, "--bind");
var reusePort = args.Contains("--reuseport");

var builder = WebApplication.CreateBuilder();
builder.Logging.SetMinimumLevel(LogLevel.Warning);
if (bind is not null && reusePort)
{
    builder.WebHost.UseSockets(sockets => sockets.CreateBoundListenSocket = endpoint =>
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        const int SOL_SOCKET = 1, SO_REUSEPORT = 15; // Linux values
        socket.SetRawSocketOption(SOL_SOCKET, SO_REUSEPORT, BitConverter.GetBytes(1));
        socket.Bind(endpoint);
        return socket;
    });
}
builder.WebHost.ConfigureKestrel(kestrel =>
{
    if (bind is not null)
    {
        var endpoint = IPEndPoint.Parse(bind);
        kestrel.Listen(endpoint);
    }
    else if (Environment.GetEnvironmentVariable("SERVER_STARTER_PORT") is { Length: > 0 } starterPorts)
    {
        // "host:port=fd" entries separated by ';'
        foreach (var entry in starterPorts.Split(';', StringSplitOptions.RemoveEmptyEntries))
            kestrel.ListenHandle(ulong.Parse(entry[(entry.LastIndexOf('=') + 1)..], CultureInfo.InvariantCulture));
    }
    else
    {
        // LISTEN_FDS from systemd or gsupervisor --no-inject. Under gsupervisor's startup hook, LISTEN_FDS is gone
        // and this does nothing: the injected integration has made Kestrel listen on the handed sockets.
        kestrel.UseSystemd();
    }
});

var app = builder.Build();
var generation = Environment.GetEnvironmentVariable("GSUPERVISOR_GENERATION")
    ?? Environment.GetEnvironmentVariable("SERVER_STARTER_GENERATION") ?? "0";
var body = $"pid={Environment.ProcessId} gen={generation}\n";
app.MapGet("/", () => Results.Text(body));
app.Run();

static string? OptionValue(string[] args, string name) =>
    Array.IndexOf(args, name) is var i and >= 0 && i + 1 < args.Length ? args[i + 1] : null;
