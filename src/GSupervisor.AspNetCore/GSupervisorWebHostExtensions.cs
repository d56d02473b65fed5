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

using System.Net;
using System.Runtime.InteropServices;
using GSupervisor.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace GSupervisor.AspNetCore;

/// <summary>Settings of <see cref="GSupervisorWebHostExtensions.UseGSupervisor"/>.</summary>
public sealed class GSupervisorOptions
{
    /// <summary>
    /// How long, after the stop signal, responses ask clients to close their connections before the graceful
    /// stop begins. Default 2 seconds.
    /// </summary>
    public TimeSpan DrainWindow { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>Stop the app gracefully when the supervisor goes away (default true), so a restarted supervisor can bind again.</summary>
    public bool StopWhenSupervisorGone { get; set; } = true;

    /// <summary>Applied to every handed listener (e.g. to set protocols), before any by-name configuration.</summary>
    public Action<ListenOptions>? ConfigureEveryListener { get; set; }

    internal Dictionary<string, Action<ListenOptions>> ByName { get; } = new(StringComparer.Ordinal);

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
}

/// <summary>Extension methods that make an ASP.NET Core app a gsupervisor child.</summary>
public static class GSupervisorWebHostExtensions
{
    /// <summary>
    /// Under gsupervisor: listen on the handed sockets instead of the configured URLs, report readiness when the
    /// application has started, and drain on the stop signal. Outside gsupervisor: does nothing.
    /// </summary>
    public static IWebHostBuilder UseGSupervisor(this IWebHostBuilder builder, Action<GSupervisorOptions>? configure = null)
    {
        var options = new GSupervisorOptions();
        configure?.Invoke(options);
        var client = GSupervisorClient.Connect();
        if (!client.IsSupervised || client.Listeners.Count == 0)
        {
            client.Dispose();
            return builder;
        }

        var drain = new DrainState();
        var missing = options.ByName.Keys.Except(client.Listeners.Select(l => l.Name)).ToList();
        if (missing.Count > 0)
            throw new InvalidOperationException(
                $"UseGSupervisor configures listener '{missing[0]}', but gsupervisor handed over only [{string.Join(", ", client.Listeners.Select(l => l.Name))}]; " +
                $"add --listen {missing[0]}=ADDRESS to the gsupervisor command");
        builder.ConfigureKestrel(kestrel =>
        {
            foreach (var listener in client.Listeners)
                kestrel.ListenHandle((ulong)listener.Fd, listen =>
                {
                    options.ConfigureEveryListener?.Invoke(listen);
                    if (options.ByName.TryGetValue(listener.Name, out var configure)) configure(listen);
                });
        });
        builder.ConfigureServices(services =>
        {
            services.AddSingleton(client);
            services.AddSingleton(options);
            services.AddSingleton(drain);
            DecorateListenerFactories(services, drain);
            services.AddSingleton<IHostLifetime, GSupervisorLifetime>();
            services.AddTransient<IStartupFilter, DrainStartupFilter>();
        });
        return builder;
    }

    private static void DecorateListenerFactories(IServiceCollection services, DrainState drain)
    {
        for (var i = 0; i < services.Count; i++)
        {
            var descriptor = services[i];
            if (descriptor.ServiceType != typeof(IConnectionListenerFactory)) continue;
            services[i] = ServiceDescriptor.Singleton<IConnectionListenerFactory>(sp =>
                new DrainingListenerFactory(Resolve(sp, descriptor), drain));
        }
    }

    private static IConnectionListenerFactory Resolve(IServiceProvider sp, ServiceDescriptor descriptor) =>
        (IConnectionListenerFactory)(descriptor.ImplementationInstance
            ?? descriptor.ImplementationFactory?.Invoke(sp)
            ?? ActivatorUtilities.CreateInstance(sp, descriptor.ImplementationType!));
}

/// <summary>Shared drain flag: set once, when the stop signal arrives.</summary>
internal sealed class DrainState
{
    private readonly CancellationTokenSource _draining = new();
    public CancellationToken Token => _draining.Token;
    public bool IsDraining => _draining.IsCancellationRequested;
    public void Begin() => _draining.Cancel();
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
/// host stops when the drain window is over. Readiness and status go to the supervisor.
/// </summary>
internal sealed class GSupervisorLifetime(
    IHostApplicationLifetime lifetime, GSupervisorClient client, GSupervisorOptions options, DrainState drain,
    ILogger<GSupervisorLifetime> logger) : IHostLifetime, IDisposable
{
    private readonly List<PosixSignalRegistration> _registrations = [];
    private int _stopping;

    public Task WaitForStartAsync(CancellationToken cancellationToken)
    {
        foreach (var signal in new[] { PosixSignal.SIGTERM, PosixSignal.SIGINT, PosixSignal.SIGQUIT })
            _registrations.Add(PosixSignalRegistration.Create(signal, OnStopSignal));
        lifetime.ApplicationStarted.Register(() =>
        {
            client.NotifyStatus($"serving as generation {client.Generation}");
            client.NotifyReady();
        });
        lifetime.ApplicationStopping.Register(client.NotifyStopping);
        client.DrainRequested.Register(BeginDrain); // whatever --stop-signal is
        if (options.StopWhenSupervisorGone)
            client.SupervisorGone.Register(() =>
            {
                logger.LogWarning("gsupervisor is gone; stopping");
                BeginDrain();
            });
        return Task.CompletedTask;
    }

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
