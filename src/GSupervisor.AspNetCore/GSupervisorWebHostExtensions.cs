// Overview
// --------
// UseGSupervisor(): under gsupervisor, Kestrel listens on the handed sockets, READY=1 goes out when the
// application has started, and the stop signal starts a drain instead of an immediate graceful stop:
//   1. stop accepting at once: the decorated connection listeners end their accept loops without touching
//      the shared socket, so the next generation takes every new connection from the common queue;
//   2. for DrainWindow, every HTTP/1.1 response carries "Connection: close" and every HTTP/2 connection is
//      asked to close (GOAWAY), so keep-alive clients move to the new generation between requests;
//   3. then the host's normal graceful stop runs.
// A stock Kestrel stop instead closes idle keep-alive connections at once and drops connections it accepted
// but had not read yet, which fails clients that send at that moment. Outside gsupervisor nothing changes.

using System.Diagnostics;
using System.Net;
using System.Runtime.InteropServices;
using GSupervisor.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace GSupervisor.AspNetCore;

/// <summary>
/// Settings of <see cref="GSupervisorWebHostExtensions.UseGSupervisor"/>. The scalar ones can also come from the
/// app's configuration, section <c>GSupervisor</c> (e.g. <c>GSupervisor__ReadinessTags=ready</c> in the
/// environment, or appsettings.json), which is how an app that gsupervisor injects is configured; a
/// <c>configure</c> delegate runs after it and wins.
/// </summary>
public sealed class GSupervisorOptions
{
    /// <summary>
    /// How long, after the stop signal, responses ask clients to close their connections before the graceful
    /// stop begins. Default 2 seconds. Configuration: <c>GSupervisor:DrainWindow</c> (<c>00:00:02</c>).
    /// </summary>
    public TimeSpan DrainWindow { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>Stop the app gracefully when the supervisor goes away (default true), so a restarted supervisor can bind again.</summary>
    public bool StopWhenSupervisorGone { get; set; } = true;

    /// <summary>
    /// When the app registered ASP.NET Core health checks (<c>AddHealthChecks()</c>), report readiness only once
    /// they are Healthy or Degraded (default true). A generation whose checks stay Unhealthy misses the
    /// supervisor's <c>--ready-timeout</c> and is rolled back while the old one keeps serving.
    /// Configuration: <c>GSupervisor:WaitForHealthChecks</c>.
    /// </summary>
    public bool WaitForHealthChecks { get; set; } = true;

    /// <summary>
    /// During this generation's probation (<c>gsupervisor --probation D</c>: it serves beside the generation it is
    /// to replace), run the health checks every <see cref="HealthCheckInterval"/>, and report failure to the
    /// supervisor (<c>WATCHDOG=trigger</c>) as soon as they are Unhealthy: the supervisor then drains this
    /// generation and the previous one serves on. Default true. Configuration: <c>GSupervisor:RollBackWhenUnhealthy</c>.
    /// </summary>
    public bool RollBackWhenUnhealthy { get; set; } = true;

    /// <summary>
    /// How often the health checks run while they are Unhealthy before ready, and during a probation. Default 1
    /// second. Configuration: <c>GSupervisor:HealthCheckInterval</c>.
    /// </summary>
    public TimeSpan HealthCheckInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Which health checks decide readiness and the outcome of a probation: those with any of these tags. Empty (the default): every
    /// registered check. Configuration: <c>GSupervisor:ReadinessTags</c> (comma-separated).
    /// </summary>
    public ISet<string> ReadinessTags { get; } = new HashSet<string>(StringComparer.Ordinal);

    /// <summary>Applied to every handed listener (e.g. to set protocols), before any by-name configuration.</summary>
    public Action<ListenOptions>? ConfigureEveryListener { get; set; }

    internal Dictionary<string, Action<ListenOptions>> ByName { get; } = new(StringComparer.Ordinal);

    /// <summary>True when gsupervisor's startup hook set this app up (no UseGSupervisor() call needed).</summary>
    internal bool Injected { get; set; }

    /// <summary>
    /// Configures the listener named <paramref name="name"/> (<c>--listen NAME=ADDRESS</c>), e.g. HTTPS on
    /// <c>https</c> or HTTP/2 only on <c>grpc</c>. Under gsupervisor, a name the supervisor did not hand over
    /// stops the app at start with an error naming it.
    /// </summary>
    public GSupervisorOptions Listener(string name, Action<ListenOptions> configure)
    {
        ByName[name] = configure;
        return this;
    }

    /// <summary>Reads the scalar settings from the <c>GSupervisor</c> configuration section; a value that does not parse stops the start with its key named.</summary>
    internal void Read(IConfiguration section)
    {
        if (section["DrainWindow"] is { } drain) DrainWindow = ParseDuration(section, "DrainWindow", drain);
        if (section["HealthCheckInterval"] is { } interval) HealthCheckInterval = ParseDuration(section, "HealthCheckInterval", interval);
        if (section["WaitForHealthChecks"] is { } wait)
            WaitForHealthChecks = bool.TryParse(wait, out var b) ? b
                : throw new InvalidOperationException($"{KeyOf(section, "WaitForHealthChecks")} is '{wait}'; use true or false");
        if (section["RollBackWhenUnhealthy"] is { } rollBack)
            RollBackWhenUnhealthy = bool.TryParse(rollBack, out var b) ? b
                : throw new InvalidOperationException($"{KeyOf(section, "RollBackWhenUnhealthy")} is '{rollBack}'; use true or false");
        if (section["StopWhenSupervisorGone"] is { } gone)
            StopWhenSupervisorGone = bool.TryParse(gone, out var b) ? b
                : throw new InvalidOperationException($"{KeyOf(section, "StopWhenSupervisorGone")} is '{gone}'; use true or false");
        if (section["ReadinessTags"] is { } tags)
            foreach (var tag in tags.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)) ReadinessTags.Add(tag);
        foreach (var child in section.GetSection("ReadinessTags").GetChildren())
            if (child.Value is { Length: > 0 } tag) ReadinessTags.Add(tag);
    }

    private static TimeSpan ParseDuration(IConfiguration section, string key, string value) =>
        TimeSpan.TryParse(value, System.Globalization.CultureInfo.InvariantCulture, out var t) && t >= TimeSpan.Zero ? t
            : throw new InvalidOperationException($"{KeyOf(section, key)} is '{value}'; use a duration such as 00:00:02");

    private static string KeyOf(IConfiguration section, string key) => section is IConfigurationSection s ? $"{s.Path}:{key}" : key;
}

/// <summary>Extension methods that make an ASP.NET Core app a gsupervisor child.</summary>
public static class GSupervisorWebHostExtensions
{
    /// <summary>
    /// Under gsupervisor: listen on the handed sockets instead of the configured URLs, report readiness when the
    /// application has started (and its health checks pass), and drain on the stop signal. Outside gsupervisor:
    /// does nothing. Calling it again, or in an app that gsupervisor already injected, only applies
    /// <paramref name="configure"/> to the settings in place.
    /// </summary>
    public static IWebHostBuilder UseGSupervisor(this IWebHostBuilder builder, Action<GSupervisorOptions>? configure = null) =>
        builder.ConfigureServices((context, services) => Configure(context.Configuration, services, configure, injected: false));

    internal static void Configure(IConfiguration configuration, IServiceCollection services, Action<GSupervisorOptions>? configure, bool injected)
    {
        var client = GSupervisorClient.Connect();
        if (services.FirstOrDefault(d => d.ServiceType == typeof(GSupervisorOptions))?.ImplementationInstance is GSupervisorOptions existing)
        {
            configure?.Invoke(existing);
            CheckNames(existing, client);
            return;
        }
        // Supervised without any --listen: the app binds its own URLs, but readiness and the drain still apply.
        if (!client.IsSupervised) return;

        var options = new GSupervisorOptions { Injected = injected };
        options.Read(configuration.GetSection("GSupervisor"));
        configure?.Invoke(options);
        CheckNames(options, client);
        var drain = new DrainState();
        services.Configure<KestrelServerOptions>(kestrel =>
        {
            foreach (var listener in client.Listeners)
                kestrel.ListenHandle((ulong)listener.Fd, listen =>
                {
                    options.ConfigureEveryListener?.Invoke(listen);
                    if (options.ByName.TryGetValue(listener.Name, out var configureListener)) configureListener(listen);
                });
        });
        services.AddSingleton(client);
        services.AddSingleton(options);
        services.AddSingleton(drain);
        // Kestrel's transport is registered already when the app calls UseGSupervisor(); an injected hosting
        // startup runs before Kestrel is added, so the transport is decorated again just before the host is built.
        DecorateListenerFactories(services);
        HostBuildingWatch.Start();
        services.AddSingleton<IHostLifetime, GSupervisorLifetime>();
        services.AddTransient<IStartupFilter, DrainStartupFilter>();
    }

    private static void CheckNames(GSupervisorOptions options, GSupervisorClient client)
    {
        if (!client.IsSupervised || client.Listeners.Count == 0) return;
        var missing = options.ByName.Keys.Except(client.Listeners.Select(l => l.Name)).ToList();
        if (missing.Count > 0)
            throw new InvalidOperationException(
                $"UseGSupervisor configures listener '{missing[0]}', but gsupervisor handed over only [{string.Join(", ", client.Listeners.Select(l => l.Name))}]; " +
                $"add --listen {missing[0]}=ADDRESS to the gsupervisor command");
    }

    /// <summary>Wraps every connection listener factory not wrapped yet, for the host whose services hold a <see cref="DrainState"/>.</summary>
    internal static void DecorateListenerFactories(IServiceCollection services)
    {
        if (services.FirstOrDefault(d => d.ServiceType == typeof(DrainState))?.ImplementationInstance is not DrainState drain) return;
        for (var i = 0; i < services.Count; i++)
        {
            var descriptor = services[i];
            if (descriptor.ServiceType != typeof(IConnectionListenerFactory) || drain.Decorated.Contains(descriptor)) continue;
            services[i] = ServiceDescriptor.Singleton<IConnectionListenerFactory>(sp =>
                new DrainingListenerFactory(Resolve(sp, descriptor), drain));
            drain.Decorated.Add(services[i]);
        }
    }

    private static IConnectionListenerFactory Resolve(IServiceProvider sp, ServiceDescriptor descriptor) =>
        (IConnectionListenerFactory)(descriptor.ImplementationInstance
            ?? descriptor.ImplementationFactory?.Invoke(sp)
            ?? ActivatorUtilities.CreateInstance(sp, descriptor.ImplementationType!));
}

/// <summary>
/// Watches the hosting library's "HostBuilding" event (a DiagnosticListener, raised by HostBuilder and
/// HostApplicationBuilder just before the service provider is made, which is how test hosts reach into apps) to
/// wrap the transport registered after UseGSupervisor ran.
/// </summary>
internal static class HostBuildingWatch
{
    private static int s_started;

    public static void Start()
    {
        if (Interlocked.Exchange(ref s_started, 1) != 0) return;
        DiagnosticListener.AllListeners.Subscribe(new Observer<DiagnosticListener>(listener =>
        {
            if (listener.Name == "Microsoft.Extensions.Hosting")
                listener.Subscribe(new Observer<KeyValuePair<string, object?>>(OnEvent));
        }));
    }

    private static void OnEvent(KeyValuePair<string, object?> e)
    {
        if (e.Key != "HostBuilding") return;
        switch (e.Value)
        {
            case HostApplicationBuilder builder:
                GSupervisorWebHostExtensions.DecorateListenerFactories(builder.Services);
                break;
            case IHostBuilder builder:
                builder.ConfigureServices((_, services) => GSupervisorWebHostExtensions.DecorateListenerFactories(services));
                break;
        }
    }

    private sealed class Observer<T>(Action<T> onNext) : IObserver<T>
    {
        public void OnNext(T value) => onNext(value);
        public void OnError(Exception error) { }
        public void OnCompleted() { }
    }
}

/// <summary>Shared drain flag: set once, when the stop signal arrives.</summary>
internal sealed class DrainState
{
    private readonly CancellationTokenSource _draining = new();
    public CancellationToken Token => _draining.Token;
    public bool IsDraining => _draining.IsCancellationRequested;
    public void Begin() => _draining.Cancel();
    /// <summary>The listener-factory registrations already wrapped, so a second pass leaves them alone.</summary>
    public HashSet<ServiceDescriptor> Decorated { get; } = [];
}

internal sealed class DrainingListenerFactory(IConnectionListenerFactory inner, DrainState drain) : IConnectionListenerFactory
{
    public async ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default) =>
        new DrainingListener(await inner.BindAsync(endpoint, cancellationToken), drain);
}

/// <summary>Ends its accept loop when the drain begins; a connection already accepted is still returned.</summary>
internal sealed class DrainingListener(IConnectionListener inner, DrainState drain) : IConnectionListener
{
    public EndPoint EndPoint => inner.EndPoint;

    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        if (drain.IsDraining) return null;
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, drain.Token);
        try
        {
            // Cancelling a pending socket accept removes it from the queue of waiters; the listening socket
            // itself (shared with the other generation) is not shut down.
            return await inner.AcceptAsync(linked.Token);
        }
        catch (OperationCanceledException) when (drain.IsDraining && !cancellationToken.IsCancellationRequested)
        {
            return null;
        }
    }

    public ValueTask UnbindAsync(CancellationToken cancellationToken = default) => inner.UnbindAsync(cancellationToken);
    public ValueTask DisposeAsync() => inner.DisposeAsync();
}

/// <summary>During the drain, asks every connection to close after its current request.</summary>
internal sealed class DrainStartupFilter(DrainState drain) : IStartupFilter
{
    public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
    {
        app.Use(async (context, nextMiddleware) =>
        {
            if (drain.IsDraining)
            {
                // HTTP/1.1: Connection: close after this response; HTTP/2 and HTTP/3: GOAWAY.
                context.Features.Get<IConnectionLifetimeNotificationFeature>()?.RequestClose();
                if (HttpProtocol.IsHttp11(context.Request.Protocol) || HttpProtocol.IsHttp10(context.Request.Protocol))
                    context.Response.Headers.Connection = "close";
            }
            await nextMiddleware(context);
        });
        next(app);
    };
}

/// <summary>
/// Replaces the console lifetime under gsupervisor: SIGTERM, SIGINT and SIGQUIT start the drain, and the
/// host stops when the drain window is over. Readiness (after the health checks pass, when the app has any),
/// status and how this generation drains go to the supervisor.
/// </summary>
internal sealed class GSupervisorLifetime(
    IHostApplicationLifetime lifetime, GSupervisorClient client, GSupervisorOptions options, DrainState drain,
    IServiceProvider services, ILogger<GSupervisorLifetime> logger) : IHostLifetime, IDisposable
{
    private readonly List<PosixSignalRegistration> _registrations = [];
    private int _stopping;

    public Task WaitForStartAsync(CancellationToken cancellationToken)
    {
        foreach (var signal in new[] { PosixSignal.SIGTERM, PosixSignal.SIGINT, PosixSignal.SIGQUIT })
            _registrations.Add(PosixSignalRegistration.Create(signal, OnStopSignal));
        client.NotifyDrain(options.Injected ? "http (injected)" : "http");
        lifetime.ApplicationStarted.Register(() =>
        {
            var how = options.Injected ? "; set up by gsupervisor's startup hook (gsupervisor --no-inject turns it off)" : "";
            if (client.Listeners.Count == 0)
                logger.LogInformation("Generation {Generation}: gsupervisor handed over no sockets (no --listen), so the app listens on its own URLs{How}",
                    client.Generation, how);
            else
                logger.LogInformation(
                    "Generation {Generation} listens on the {Count} socket(s) gsupervisor handed over ({Names}), not on URLs configured for the app{How}",
                    client.Generation, client.Listeners.Count, string.Join(", ", client.Listeners.Select(l => l.Name)), how);
            _ = ReportReadyAsync(lifetime.ApplicationStopping);
        });
        lifetime.ApplicationStopping.Register(client.NotifyStopping);
        client.ProbationStarted.Register(() => _ = WatchProbationAsync(lifetime.ApplicationStopping));
        client.DrainRequested.Register(BeginDrain); // whatever --stop-signal is
        if (options.StopWhenSupervisorGone)
            client.SupervisorGone.Register(() =>
            {
                logger.LogWarning("gsupervisor is gone; stopping");
                BeginDrain();
            });
        return Task.CompletedTask;
    }

    /// <summary>READY=1 once started and, when the app registered health checks, once they are not Unhealthy.</summary>
    private async Task ReportReadyAsync(CancellationToken stopping)
    {
        var health = options.WaitForHealthChecks ? services.GetService<HealthCheckService>() : null;
        if (health is null)
        {
            client.NotifyStatus($"serving as generation {client.Generation}");
            client.NotifyReady();
            return;
        }
        var counts = CountedChecks;
        string? reported = null;
        while (!stopping.IsCancellationRequested)
        {
            HealthReport report;
            try
            {
                report = await health.CheckHealthAsync(counts, stopping);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            if (report.Status != HealthStatus.Unhealthy)
            {
                client.NotifyStatus(report.Status == HealthStatus.Degraded
                    ? $"serving as generation {client.Generation}, degraded: {Describe(report, HealthStatus.Degraded)}"
                    : $"serving as generation {client.Generation}");
                client.NotifyReady();
                if (reported is not null) logger.LogInformation("Health checks pass: ready");
                return;
            }
            var status = "not ready: " + Describe(report, HealthStatus.Unhealthy);
            if (status != reported)
            {
                client.NotifyStatus(status);
                logger.LogWarning("Not reporting ready to gsupervisor: {Checks}; checking again every {Interval}", Describe(report, HealthStatus.Unhealthy), options.HealthCheckInterval);
                reported = status;
            }
            try
            {
                await Task.Delay(options.HealthCheckInterval, stopping);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>The health checks that count: those with a readiness tag, or all when no tag is set.</summary>
    private Func<HealthCheckRegistration, bool>? CountedChecks =>
        options.ReadinessTags.Count == 0 ? null : r => r.Tags.Overlaps(options.ReadinessTags);

    /// <summary>
    /// During the probation, the health checks run every HealthCheckInterval; the first Unhealthy result is reported
    /// as a failure, and the supervisor rolls this generation back (it hears DRAIN next).
    /// </summary>
    private async Task WatchProbationAsync(CancellationToken stopping)
    {
        var health = options.RollBackWhenUnhealthy ? services.GetService<HealthCheckService>() : null;
        if (health is null) return;
        using var over = CancellationTokenSource.CreateLinkedTokenSource(stopping, client.ProbationPassed, client.DrainRequested);
        logger.LogInformation("On probation for {Left}: health checks run every {Interval}, and if they turn Unhealthy gsupervisor rolls this generation back",
            client.ProbationLeft, options.HealthCheckInterval);
        var counts = CountedChecks;
        while (!over.IsCancellationRequested)
        {
            HealthReport report;
            try
            {
                report = await health.CheckHealthAsync(counts, over.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e)
            {
                logger.LogError(e, "Could not run the health checks during the probation; no longer watching them");
                return;
            }
            // Passed (or drained) while the checks ran; a report at the very end would reach a generation that serves alone.
            if (over.IsCancellationRequested || client.ProbationLeft <= TimeSpan.Zero) return;
            if (report.Status == HealthStatus.Unhealthy)
            {
                var why = Describe(report, HealthStatus.Unhealthy);
                logger.LogError("Health checks turned Unhealthy during the probation ({Checks}); reporting failure to gsupervisor", why);
                client.ReportFailure("failed its probation: " + why);
                return;
            }
            try
            {
                await Task.Delay(options.HealthCheckInterval, over.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private static string Describe(HealthReport report, HealthStatus status) =>
        string.Join("; ", report.Entries.Where(e => e.Value.Status == status).Select(e =>
            $"health check '{e.Key}' is {status}" +
            ((e.Value.Description ?? e.Value.Exception?.Message) is { Length: > 0 } why ? ": " + why : "")));

    private void OnStopSignal(PosixSignalContext context)
    {
        context.Cancel = true;
        BeginDrain();
    }

    private void BeginDrain()
    {
        if (Interlocked.Exchange(ref _stopping, 1) != 0) return;
        drain.Begin();
        client.NotifyStatus("draining");
        logger.LogInformation("draining for {Window}: no new connections, keep-alive clients asked to close", options.DrainWindow);
        _ = Task.Delay(options.DrainWindow).ContinueWith(_ => lifetime.StopApplication(), TaskScheduler.Default);
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
    }
}
