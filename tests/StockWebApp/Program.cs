// A stock ASP.NET Core app, as `dotnet new web` makes it, that references nothing of gsupervisor: the tests run it
// unmodified under gsupervisor, which reaches it through its startup hook. Two test knobs, both plain ASP.NET Core:
//   HEALTH_FILE=PATH   registers a health check "database" that reports what PATH holds (healthy, degraded or
//                      unhealthy), read when the check runs;
//   its answer to GET / names the process and GSUPERVISOR_GENERATION, so a test sees which generation served it.

using Microsoft.Extensions.Diagnostics.HealthChecks;

var builder = WebApplication.CreateBuilder(args);
builder.Logging.SetMinimumLevel(LogLevel.Warning);
builder.Logging.AddFilter("GSupervisor", LogLevel.Information);
if (Environment.GetEnvironmentVariable("HEALTH_FILE") is { Length: > 0 } healthFile)
    builder.Services.AddHealthChecks().AddCheck("database", () => File.ReadAllText(healthFile).Trim() switch
    {
        "healthy" => HealthCheckResult.Healthy(),
        "degraded" => HealthCheckResult.Degraded("replica lag 40s"),
        _ => HealthCheckResult.Unhealthy("no connection to db.internal:5432"),
    });

var app = builder.Build();
var body = System.Text.Encoding.ASCII.GetBytes($"pid={Environment.ProcessId} gen={Environment.GetEnvironmentVariable("GSUPERVISOR_GENERATION")}\n");
app.MapGet("/", () => Results.Bytes(body, "text/plain"));
app.Run();
