// A minimal API that runs under gsupervisor with zero-failure reloads, and on its own with `dotnet run`.
// UseGSupervisor() is the whole integration: Kestrel on the handed sockets, READY=1 once started, and an
// HTTP drain on the stop signal. Outside gsupervisor it does nothing.

using GSupervisor.AspNetCore;

var builder = WebApplication.CreateBuilder(args);
builder.WebHost.UseGSupervisor();
builder.Logging.SetMinimumLevel(LogLevel.Warning);

var app = builder.Build();
var body = $"pid={Environment.ProcessId} gen={Environment.GetEnvironmentVariable("GSUPERVISOR_GENERATION") ?? "0"}\n";
app.MapGet("/", () => Results.Text(body));
app.Run();
