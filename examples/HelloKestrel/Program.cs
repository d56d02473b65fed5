// A minimal API that runs under gsupervisor, and on its own with `dotnet run` (then it uses its URLs).
// Under gsupervisor, Kestrel listens on the sockets the supervisor handed over and reports READY=1 once
// the app has started, so the supervisor stops the previous generation only then.

using GSupervisor.Client;

var builder = WebApplication.CreateBuilder(args);
var supervisor = GSupervisorClient.Connect();
if (supervisor.Listeners.Count > 0)
{
    builder.WebHost.ConfigureKestrel(kestrel =>
    {
        foreach (var listener in supervisor.Listeners)
            kestrel.ListenHandle((ulong)listener.Fd);
    });
}
builder.Logging.SetMinimumLevel(LogLevel.Warning);

var app = builder.Build();
var generation = Environment.GetEnvironmentVariable("GSUPERVISOR_GENERATION") ?? "0";
var body = $"pid={Environment.ProcessId} gen={generation}\n";
app.MapGet("/", () => Results.Text(body));

app.Lifetime.ApplicationStarted.Register(() =>
{
    supervisor.NotifyStatus($"serving as generation {generation}");
    supervisor.NotifyReady();
});
app.Lifetime.ApplicationStopping.Register(supervisor.NotifyStopping);
supervisor.SupervisorGone.Register(() => app.Lifetime.StopApplication());

app.Run();
