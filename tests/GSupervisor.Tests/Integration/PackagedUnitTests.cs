using System.Text.RegularExpressions;

namespace GSupervisor.Tests.Integration;

/// <summary>
/// The .deb's units under a real systemd (Debian 12 booted in a container): installed with dpkg, started,
/// reloaded, reloaded into a failure, stopped, as an operator would. The child is HelloKestrel on the host's
/// .NET runtime, mounted read-only into the container; the unit's hardening (ProtectHome= and the rest) applies.
/// </summary>
[TestFixture]
public class PackagedUnitTests
{
    private SystemdContainer _container = null!;

    [OneTimeSetUp]
    public void BootAndInstall()
    {
        var dotnetRoot = Path.GetDirectoryName(Path.GetFullPath(ResolveDotnet()))!;
        _container = SystemdContainer.Boot($"--bind-ro={dotnetRoot}:/usr/share/dotnet");
        var root = _container.Root;
        File.Copy(Paths.Deb, Path.Combine(root, "root/gsupervisor.deb"));
        CopyTree(Paths.HelloKestrel[..Paths.HelloKestrel.LastIndexOf('/')], Path.Combine(root, "srv/hello"));
        File.CreateSymbolicLink(Path.Combine(root, "usr/bin/dotnet"), "/usr/share/dotnet/dotnet");
        _container.Must("dpkg", "-i", "/root/gsupervisor.deb");
    }

    [OneTimeTearDown]
    public void Halt() => _container?.Dispose();

    private static string ResolveDotnet()
    {
        var onPath = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, "dotnet")).FirstOrDefault(File.Exists);
        Assert.That(onPath, Is.Not.Null, "dotnet on PATH");
        return new FileInfo(onPath!).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? onPath!;
    }

    private static void CopyTree(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(to, Path.GetRelativePath(from, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target, overwrite: true);
        }
    }

    private static int GenerationPid(string body) => int.Parse(Regex.Match(body, @"pid=(\d+)").Groups[1].Value);

    /// <summary>
    /// A deploy that cannot start (the app's files are gone): `systemctl reload` fails, refused before anything
    /// starts, the unit stays active with the same main process, its status says so, and generation 2 answers on.
    /// </summary>
    private void ReloadIntoAFailedDeploy(string unit, string mainPid, string url, string servingAnswer)
    {
        Directory.Move(Path.Combine(_container.Root, "srv/hello"), Path.Combine(_container.Root, "srv/hello.off"));
        try
        {
            var (code, output) = _container.Exec("systemctl", "reload", unit);
            Assert.That(code, Is.Not.EqualTo(0), output);
        }
        finally
        {
            Directory.Move(Path.Combine(_container.Root, "srv/hello.off"), Path.Combine(_container.Root, "srv/hello"));
        }
        var afterFailure = _container.Show(unit, "ActiveState", "MainPID", "StatusText");
        Assert.That(afterFailure["ActiveState"], Is.EqualTo("active"));
        Assert.That(afterFailure["MainPID"], Is.EqualTo(mainPid));
        Assert.That(afterFailure["StatusText"], Does.StartWith("serving generation 2").And.Contain("last reload refused: cannot run `/usr/bin/dotnet /srv/hello/HelloKestrel.dll`"));
        Assert.That(_container.Get(url), Is.EqualTo(servingAnswer), "generation 2 still answers");

        // Under the journal each line carries its priority and no timestamp of its own: `journalctl -p err` shows the
        // failed reload and nothing routine.
        var errors = "";
        Poll.Until(() => (errors = _container.Must("journalctl", "-u", unit, "-p", "err", "--no-pager", "-o", "cat")).Contains("reload refused"),
            TimeSpan.FromSeconds(30), "the refused reload in journalctl -p err");
        Assert.That(errors.Split('\n'), Has.Some.StartsWith("reload refused: cannot run"), "no timestamp or level of its own");
        Assert.That(errors, Does.Not.Contain("is ready").And.Not.Contain("listening on").And.Not.Contain("reload succeeded"), "nothing routine");
        Assert.That(_container.Must("journalctl", "-u", unit, "-p", "info", "--no-pager", "-o", "cat"), Does.Contain("reload succeeded"));
    }

    /// <summary>
    /// A package upgrade (here the same package again) upgrades the running unit in place: systemd's MainPID and
    /// the child stay, the unit stays active, and the main process runs the new file. Removing the package stops it.
    /// </summary>
    [Test]
    public void Installing_the_package_again_upgrades_a_running_unit_in_place_and_removing_it_stops_the_unit()
    {
        const string unit = "gsupervisor@upgraded.service";
        Directory.CreateDirectory(Path.Combine(_container.Root, "etc/gsupervisor"));
        File.WriteAllText(Path.Combine(_container.Root, "etc/gsupervisor/upgraded.conf"),
            "OPTIONS=--listen 127.0.0.1:8082\nCOMMAND=/usr/bin/dotnet /srv/hello/HelloKestrel.dll\n");
        try
        {
            _container.Must("systemctl", "start", unit);
            var mainPid = _container.Show(unit, "MainPID")["MainPID"];
            var answer = _container.Get("http://127.0.0.1:8082/");
            Assert.That(answer, Does.EndWith("gen=1"));

            var installed = _container.Must("dpkg", "-i", "/root/gsupervisor.deb");
            Assert.That(installed, Does.Contain($"pid {mainPid} ({unit}): upgraded: gsupervisor {Paths.Version} -> {Paths.Version} in place"));
            var after = _container.Show(unit, "ActiveState", "MainPID", "StatusText");
            Assert.That(after["ActiveState"], Is.EqualTo("active"));
            Assert.That(after["MainPID"], Is.EqualTo(mainPid), "the same main process");
            Assert.That(after["StatusText"], Does.Contain($"upgraded to gsupervisor {Paths.Version}"));
            Assert.That(_container.Must("readlink", $"/proc/{mainPid}/exe").Trim(), Is.EqualTo("/usr/lib/gsupervisor/gsupervisor"),
                "the main process runs the file the package installed now, not the replaced one (\"(deleted)\")");
            Assert.That(_container.Get("http://127.0.0.1:8082/"), Is.EqualTo(answer), "the same child answers");
            Poll.Until(() => _container.Must("journalctl", "-u", unit, "--no-pager", "-o", "cat").Contains("took over in place"),
                TimeSpan.FromSeconds(30), "the new image's line in the journal");

            var removed = _container.Must("dpkg", "-r", "gsupervisor");
            Assert.That(removed, Does.Contain($"stopping {unit}"));
            Assert.That(_container.Show(unit, "ActiveState")["ActiveState"], Is.EqualTo("inactive"));
            Assert.That(_container.Exec("test", "-e", $"/proc/{mainPid}").Code, Is.Not.EqualTo(0), "the supervisor has exited");
        }
        finally
        {
            _container.Exec("systemctl", "stop", unit);
            _container.Must("dpkg", "-i", "/root/gsupervisor.deb"); // as the other tests expect it
        }
    }

    [Test]
    public void Template_unit_starts_reloads_survives_a_failed_reload_and_stops()
    {
        const string unit = "gsupervisor@hello.service";
        Directory.CreateDirectory(Path.Combine(_container.Root, "etc/gsupervisor"));
        File.WriteAllText(Path.Combine(_container.Root, "etc/gsupervisor/hello.conf"),
            "OPTIONS=--listen 127.0.0.1:8080 --stop-timeout 30s\nCOMMAND=/usr/bin/dotnet /srv/hello/HelloKestrel.dll\n");

        _container.Must("systemctl", "start", unit);
        var started = _container.Show(unit, "ActiveState", "MainPID", "StatusText");
        Assert.That(started["ActiveState"], Is.EqualTo("active"));
        Assert.That(started["StatusText"], Does.Match(@"^serving generation 1 \(pid \d+\)$"));
        var mainPid = started["MainPID"];
        Assert.That(_container.Must("readlink", $"/proc/{mainPid}/exe").Trim(), Is.EqualTo("/usr/lib/gsupervisor/gsupervisor"),
            "systemd's main process is the packaged native binary");
        var first = _container.Get("http://127.0.0.1:8080/");
        Assert.That(first, Does.EndWith("gen=1"));

        _container.Must("systemctl", "reload", unit);
        var second = Http.UntilGeneration(() => _container.Get("http://127.0.0.1:8080/"), 2);
        Assert.That(GenerationPid(second), Is.Not.EqualTo(GenerationPid(first)));
        Assert.That(_container.Show(unit, "MainPID")["MainPID"], Is.EqualTo(mainPid), "a reload keeps the supervisor");

        ReloadIntoAFailedDeploy(unit, mainPid, "http://127.0.0.1:8080/", second);

        _container.Must("systemctl", "stop", unit);
        var stopped = _container.Show(unit, "ActiveState", "Result");
        Assert.That(stopped["ActiveState"], Is.EqualTo("inactive"));
        Assert.That(stopped["Result"], Is.EqualTo("success"), "the supervisor exited 0 after stopping its generations");
        // journald reads the unit's output stream on its own time: the last line may come a moment after the stop.
        Poll.Until(() => _container.Must("journalctl", "-u", unit, "--no-pager", "-o", "cat").Contains("all children have exited; exiting with status 0"),
            TimeSpan.FromSeconds(30), "the supervisor's last log line in the journal");
    }

    [Test]
    public void Socket_activated_pair_starts_on_the_first_connection_reloads_survives_a_failed_reload_and_stops()
    {
        foreach (var file in new[] { "hello-activated.socket", "hello-activated.service" })
            File.Copy(Path.Combine(_container.Root, "usr/share/doc/gsupervisor/examples", file), Path.Combine(_container.Root, "etc/systemd/system", file), overwrite: true);
        _container.Must("systemctl", "daemon-reload");
        _container.Must("systemctl", "start", "hello-activated.socket");
        Assert.That(_container.Show("hello-activated.service", "ActiveState")["ActiveState"], Is.EqualTo("inactive"), "nothing runs before a client comes");

        // systemd holds port 80; the first connection starts the service, which takes the socket by name.
        var first = _container.Get("http://127.0.0.1:80/");
        Assert.That(first, Does.EndWith("gen=1"));
        var service = _container.Show("hello-activated.service", "ActiveState", "MainPID");
        Assert.That(service["ActiveState"], Is.EqualTo("active"));
        var status = _container.Must("cat", $"/proc/{service["MainPID"]}/status");
        Assert.That(Regex.Match(status, @"Uid:\s+(\d+)").Groups[1].Value, Is.EqualTo("33"), "User=www-data");

        _container.Must("systemctl", "reload", "hello-activated.service");
        var second = Http.UntilGeneration(() => _container.Get("http://127.0.0.1:80/"), 2);
        Assert.That(_container.Show("hello-activated.service", "MainPID")["MainPID"], Is.EqualTo(service["MainPID"]));

        ReloadIntoAFailedDeploy("hello-activated.service", service["MainPID"], "http://127.0.0.1:80/", second);

        _container.Must("systemctl", "stop", "hello-activated.service", "hello-activated.socket");
        Assert.That(_container.Show("hello-activated.service", "ActiveState", "Result"),
            Is.EquivalentTo(new Dictionary<string, string> { ["ActiveState"] = "inactive", ["Result"] = "success" }));
    }
}
