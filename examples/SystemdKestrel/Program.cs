// An app that knows nothing of gsupervisor: stock Kestrel with its own systemd socket-activation support.
// UseSystemd() on the Kestrel options adopts the sockets at fds 3.. when LISTEN_PID is this process, which
// gsupervisor guarantees. By default gsupervisor's startup hook takes the sockets first and gives the app
// READY=1 and the drain; with --no-inject it sends no READY=1 (Microsoft.Extensions.Hosting.Systemd only does
// so when its parent is systemd itself), so run it with --ready delay:...

var builder = WebApplication.CreateBuilder(args);
builder.WebHost.ConfigureKestrel(kestrel => kestrel.UseSystemd());
builder.Logging.SetMinimumLevel(LogLevel.Warning);

var app = builder.Build();
var body = $"pid={Environment.ProcessId} gen={Environment.GetEnvironmentVariable("GSUPERVISOR_GENERATION") ?? "0"}\n";
app.MapGet("/", () => Results.Text(body));
app.Run();
