using System.Net.Sockets;

namespace GSupervisor.Tests.Integration;

/// <summary>examples/EchoServer reloaded while clients echo: no byte lost, no connection cut.</summary>
[TestFixture]
public class EchoServerTests
{
    [Test]
    public void No_echo_is_lost_or_cut_across_reloads()
    {
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--", Paths.EchoServer]);
        var port = supervisor.WaitForPort();
        supervisor.WaitForReady(1);

        using var stop = new CancellationTokenSource();
        var failures = new List<string>();
        long exchanges = 0;
        var workers = Enumerable.Range(0, 8).Select(seed => Task.Run(async () =>
        {
            var random = new Random(seed);
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                    await socket.ConnectAsync("127.0.0.1", port, timeout.Token);
                    // Several exchanges on one connection, spread over time, so reloads land mid-connection.
                    for (var i = 0; i < 5; i++)
                    {
                        var payload = new byte[random.Next(1, 8192)];
                        random.NextBytes(payload);
                        await socket.SendAsync(payload, timeout.Token);
                        var echoed = new byte[payload.Length];
                        var got = 0;
                        while (got < echoed.Length)
                        {
                            var n = await socket.ReceiveAsync(echoed.AsMemory(got), timeout.Token);
                            if (n == 0) throw new IOException($"connection cut after {got} of {payload.Length} bytes");
                            got += n;
                        }
                        if (!echoed.AsSpan().SequenceEqual(payload)) throw new IOException("echo differs from what was sent");
                        Interlocked.Increment(ref exchanges);
                        await Task.Delay(random.Next(0, 20), timeout.Token); // paces one client; not a wait for a condition
                    }
                    socket.Shutdown(SocketShutdown.Send);
                    var tail = new byte[1];
                    if (await socket.ReceiveAsync(tail, timeout.Token) != 0) throw new IOException("bytes after the last echo");
                }
                catch (Exception e) when (e is SocketException or IOException or OperationCanceledException)
                {
                    lock (failures) failures.Add(e.Message);
                }
            }
        })).ToArray();

        Poll.Until(() => Interlocked.Read(ref exchanges) > 200, TimeSpan.FromSeconds(60), "echo traffic");
        for (var generation = 2; generation <= 6; generation++)
        {
            var before = Interlocked.Read(ref exchanges);
            supervisor.Signal(12);
            supervisor.WaitForLine($@"reload succeeded: generation {generation} ", TimeSpan.FromSeconds(60));
            supervisor.WaitForLine($@"generation {generation - 1} \(pid \d+\) exited with exit code 0", TimeSpan.FromSeconds(60));
            Poll.Until(() => Interlocked.Read(ref exchanges) > before + 100, TimeSpan.FromSeconds(60), "echoes after the reload");
        }
        stop.Cancel();
        Task.WaitAll(workers, TimeSpan.FromSeconds(30));
        TestContext.Out.WriteLine($"echo: 5 reloads, {exchanges} exchanges, {failures.Count} failed");
        Assert.That(failures, Is.Empty);
    }

    [Test]
    public void Drain_request_reaches_the_app_over_the_handoff_connection_whatever_the_stop_signal()
    {
        // SIGWINCH does nothing by default: only the DRAIN line can make generation 1 stop in time.
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--stop-signal", "SIGWINCH", "--stop-timeout", "60s", "--", Paths.EchoServer]);
        supervisor.WaitForPort();
        var firstPid = supervisor.WaitForGenerationPid(1);
        supervisor.WaitForReady(1);
        supervisor.Signal(12);
        supervisor.WaitForLine("reload succeeded: generation 2 ");
        supervisor.WaitForLine($@"generation 1 \(pid {firstPid}\) exited with exit code 0", TimeSpan.FromSeconds(30));
    }
}
