// A child process for gsupervisor's integration tests. It takes its listeners by LISTEN_FDS or over the
// handoff socket, answers each connection with one HTTP/1.1 response ("pid=P gen=G"), reports readiness
// as asked, and can misbehave on request (exit early or die by a signal, never get ready, ignore SIGTERM,
// crash while serving or while draining, send garbage to the supervisor's sockets).
//
//   TestChild [--listeners fds|handoff] [--ready notify|handoff|never] [--ready-after DURATION-MS]
//             [--exit-before-ready CODE] [--signal-before-ready SIGNUM] [--ignore-term]
//             [--response-delay-ms N] [--crash-after-ready-ms N] [--fail-after-ready-ms N] [--crash-on-term-ms N]
//             [--hold-responses-until PREFIX] [--fuzz-sockets COUNT] [--args-file PATH]
//
// --hold-responses-until PREFIX: each response waits until the file PREFIX.N exists (N: the generation), so a
// test decides when a generation's in-flight requests complete.
// --fail-after-ready-ms N: N ms after ready, report failure (STATUS= and WATCHDOG=trigger) the way it reported ready.
// It says on stderr when it gets SIGTERM, so a test sees which generations were asked to stop.

using System.Globalization;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using GSupervisor.Client;

// --args-file PATH: more arguments, read from a file at start, so a test can change how the next generation
// behaves; and from PATH.N for generation N only, so a fault can target one generation without a race.
var argList = args.ToList();
var argsFile = argList.IndexOf("--args-file");
if (argsFile >= 0 && argsFile + 1 < argList.Count)
{
    var path = argList[argsFile + 1];
    foreach (var file in new[] { path, $"{path}.{Environment.GetEnvironmentVariable("GSUPERVISOR_GENERATION")}" })
        if (File.Exists(file))
            argList.AddRange(File.ReadAllText(file).Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
args = argList.ToArray();

var options = new Dictionary<string, string>();
var flags = new HashSet<string>();
for (var i = 0; i < args.Length; i++)
{
    if (args[i] is "--ignore-term") flags.Add(args[i]);
    else if (i + 1 < args.Length) options[args[i]] = args[++i];
}
string Opt(string name, string fallback) => options.GetValueOrDefault(name, fallback);
int IntOpt(string name, int fallback) => int.Parse(Opt(name, fallback.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);

var generation = Environment.GetEnvironmentVariable("GSUPERVISOR_GENERATION") ?? "0";
var pid = Environment.ProcessId;

if (options.TryGetValue("--exit-before-ready", out var earlyExit))
{
    Console.Error.WriteLine($"TestChild: cannot start: exiting with {earlyExit} before ready, as asked");
    return int.Parse(earlyExit, CultureInfo.InvariantCulture);
}
if (options.TryGetValue("--signal-before-ready", out var earlySignal))
{
    Console.Error.WriteLine($"TestChild: dying by signal {earlySignal} before ready, as asked");
    Faults.DieBySignal(int.Parse(earlySignal, CultureInfo.InvariantCulture));
}

using var stopping = new CancellationTokenSource();
var ignoreTerm = flags.Contains("--ignore-term");
using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context =>
{
    context.Cancel = true;
    Console.Error.WriteLine($"TestChild pid {Environment.ProcessId}: got SIGTERM");
    if (options.TryGetValue("--crash-on-term-ms", out var crashOnTerm))
        _ = Task.Delay(int.Parse(crashOnTerm, CultureInfo.InvariantCulture)).ContinueWith(_ => Faults.DieBySignal(6 /* SIGABRT */));
    if (!ignoreTerm) stopping.Cancel();
});

using var client = GSupervisorClient.Connect(new GSupervisorClientOptions { UseHandoffSocket = Opt("--listeners", "fds") == "handoff" });

var responseDelay = TimeSpan.FromMilliseconds(IntOpt("--response-delay-ms", 0));
Task? release = options.TryGetValue("--hold-responses-until", out var holdPrefix) ? Faults.FileCreated($"{holdPrefix}.{generation}") : null;
var inFlight = new CountdownEvent(1);
var acceptors = client.Listeners.Select(l => Task.Run(() => AcceptLoop(l.Socket))).ToList();

if (options.ContainsKey("--fuzz-sockets")) Faults.FuzzSupervisorSockets(IntOpt("--fuzz-sockets", 0), seed: pid);
await Task.Delay(IntOpt("--ready-after", 0));
switch (Opt("--ready", "notify"))
{
    case "notify": NotifyDatagram("READY=1\nSTATUS=serving\n"); break;
    case "handoff": client.NotifyReady(); break;
    case "never": break;
}

if (options.TryGetValue("--fail-after-ready-ms", out var failAfter))
{
    await Task.Delay(int.Parse(failAfter, CultureInfo.InvariantCulture));
    Console.Error.WriteLine("TestChild: reporting failure, as asked");
    if (Opt("--ready", "notify") == "handoff") client.ReportFailure("the test asked this generation to fail");
    else NotifyDatagram("STATUS=the test asked this generation to fail\nWATCHDOG=trigger\n");
}
if (options.TryGetValue("--crash-after-ready-ms", out var crashAfter))
{
    await Task.Delay(int.Parse(crashAfter, CultureInfo.InvariantCulture));
    Console.Error.WriteLine("TestChild: crashing after ready, as asked");
    Faults.Crash(70);
}

try
{
    await Task.Delay(Timeout.Infinite, stopping.Token);
}
catch (OperationCanceledException)
{
    // SIGTERM: stop accepting, finish what was accepted, exit.
}
await Task.WhenAll(acceptors);
inFlight.Signal();
inFlight.Wait(TimeSpan.FromSeconds(30));
return 0;

async Task AcceptLoop(Socket listener)
{
    while (!stopping.IsCancellationRequested)
    {
        Socket connection;
        try
        {
            // Cancelling a pending accept leaves the shared listening socket alone (no shutdown).
            connection = await listener.AcceptAsync(stopping.Token);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        inFlight.AddCount();
        _ = Task.Run(async () =>
        {
            try
            {
                await Serve(connection);
            }
            finally
            {
                inFlight.Signal();
            }
        });
    }
}

async Task Serve(Socket connection)
{
    using (connection)
    {
        var buffer = new byte[4096];
        var received = new StringBuilder();
        try
        {
            while (!received.ToString().Contains("\r\n\r\n", StringComparison.Ordinal))
            {
                var n = await connection.ReceiveAsync(buffer);
                if (n == 0) return;
                received.Append(Encoding.ASCII.GetString(buffer, 0, n));
            }
            if (responseDelay > TimeSpan.Zero) await Task.Delay(responseDelay);
            if (release is not null) await release;
            var body = $"pid={pid} gen={generation}\n";
            var response = $"HTTP/1.1 200 OK\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n{body}";
            await connection.SendAsync(Encoding.ASCII.GetBytes(response));
            connection.Shutdown(SocketShutdown.Send);
            // Let the client read the response before close, so close never turns into a reset.
            while (await connection.ReceiveAsync(buffer) > 0)
            {
            }
        }
        catch (SocketException)
        {
            // The client went away: nothing to answer.
        }
    }
}

void NotifyDatagram(string message)
{
    var path = Environment.GetEnvironmentVariable("NOTIFY_SOCKET");
    if (string.IsNullOrEmpty(path)) return;
    using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
    socket.SendTo(Encoding.UTF8.GetBytes(message), new UnixDomainSocketEndPoint(path));
}
