using System.Text.Json;

namespace GSupervisor.Tests.Integration;

/// <summary>
/// The path a user of the packages takes, from scratch: `dotnet new web`, `dotnet add package
/// GSupervisor.AspNetCore` from `make pack`'s out/packages, the one line, a build, and reloads under load.
/// </summary>
[TestFixture]
public class NuGetPackageTests
{
    private static readonly string Dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";

    [Test]
    public void A_new_web_app_with_the_package_and_one_line_reloads_without_one_failed_request()
    {
        using var dir = new TempDirectory();
        var app = dir.File("app");
        // A NuGet cache of its own, so a rebuilt package of the same version is not shadowed by an older copy.
        var environment = new Dictionary<string, string> { ["NUGET_PACKAGES"] = dir.File("nuget"), ["DOTNET_NOLOGO"] = "1", ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1" };
        MustRun(["new", "web", "-o", app, "-n", "FreshApp"], dir.Path, environment);
        MustRun(["add", "package", "GSupervisor.AspNetCore", "--version", Paths.Version, "--source", Paths.Packages], app, environment);

        var program = Path.Combine(app, "Program.cs");
        var lines = File.ReadAllLines(program).ToList();
        var create = lines.FindIndex(l => l.Contains("WebApplication.CreateBuilder(args)", StringComparison.Ordinal));
        Assert.That(create, Is.GreaterThanOrEqualTo(0), "the template's Program.cs creates a builder");
        lines.Insert(create + 1, "builder.WebHost.UseGSupervisor();");
        File.WriteAllLines(program, ["using GSupervisor.AspNetCore;", .. lines]);
        MustRun(["build", "-c", "Release", "-o", dir.File("bin")], app, environment);

        // --no-inject: the package alone does the work. Run from its folder, as deployed, so its appsettings.json
        // applies (without it ASP.NET Core logs every request).
        using var supervisor = SupervisorProcess.Start(["--listen", "127.0.0.1:0", "--no-inject", "--", Dotnet, dir.File("bin/FreshApp.dll")],
            workingDirectory: dir.File("bin"));
        var port = supervisor.WaitForPort();
        supervisor.WaitForLine(@"generation 1 \(pid \d+\) is ready \(READY=1 via handoff socket", TimeSpan.FromSeconds(60));
        var status = JsonDocument.Parse(Verb.Run(["status", "--json", "--control", supervisor.ControlPath]).Stdout).RootElement;
        Assert.That(status.GetProperty("generations")[0].GetProperty("drain").GetString(), Is.EqualTo("http"));

        using var load = new KeepAliveLoad(port, connections: 50);
        Reloads.UnderLoad(supervisor, load, 3, "fresh app from out/packages, keep-alive");
        Assert.That(load.Failures, Is.Empty);
    }

    private static void MustRun(string[] arguments, string workingDirectory, Dictionary<string, string> environment)
    {
        var (code, output) = Command.Run(Dotnet, arguments, workingDirectory, environment, timeout: TimeSpan.FromMinutes(5));
        Assert.That(code, Is.EqualTo(0), $"dotnet {string.Join(' ', arguments)}:\n{output}");
    }
}
