namespace GSupervisor.Tests.Integration;

/// <summary>`make deb` builds an installable package whose native binary runs from an extracted tree.</summary>
[TestFixture]
public class PackagingTests
{
    private static string _deb = null!;
    private static TempDirectory _extracted = null!;

    private static (int Code, string Output) Run(string program, IEnumerable<string> arguments, string? workingDirectory = null, IDictionary<string, string>? environment = null) =>
        Command.Run(program, arguments, workingDirectory, environment, onlyThisEnvironment: environment is not null);

    [OneTimeSetUp]
    public void ExtractPackage()
    {
        _deb = Paths.Deb;
        Assert.That(File.Exists(_deb), Is.True, $"{_deb}: run `make test`, which builds the package first");
        _extracted = new TempDirectory();
        Assert.That(Run("dpkg-deb", ["-x", _deb, _extracted.Path]).Code, Is.EqualTo(0));
    }

    [OneTimeTearDown]
    public void CleanUp() => _extracted?.Dispose();

    [Test]
    public void Package_holds_the_binary_the_template_unit_the_man_page_and_the_examples()
    {
        var (code, listing) = Run("dpkg-deb", ["-c", _deb]);
        Assert.That(code, Is.EqualTo(0));
        Assert.That(listing, Does.Match(@"-rwxr-xr-x root/root +\d+ [-0-9: ]+\./usr/lib/gsupervisor/gsupervisor\n"));
        Assert.That(listing, Does.Match(@"-rwxr-xr-x root/root +\d+ [-0-9: ]+\./usr/lib/gsupervisor/gsupervisor-exec\n"));
        Assert.That(listing, Does.Contain("./usr/lib/gsupervisor/libMonoPosixHelper.so"));
        Assert.That(listing, Does.Contain("./usr/bin/gsupervisor -> ../lib/gsupervisor/gsupervisor"));
        // Native AOT: no runtime configuration, nothing for a .NET host to load. The only assemblies are the startup
        // hook and the integration it loads, which the .NET children run.
        Assert.That(listing, Does.Not.Contain(".runtimeconfig.json").And.Not.Contain(".deps.json"));
        var assemblies = listing.Split('\n').Where(l => l.EndsWith(".dll", StringComparison.Ordinal)).Select(l => l[(l.LastIndexOf(' ') + 1)..]).Order(StringComparer.Ordinal);
        Assert.That(assemblies, Is.EqualTo(new[] { "AspNetCore", "Client", "Core", "StartupHook" }.Select(n => $"./usr/lib/gsupervisor/dotnet/GSupervisor.{n}.dll")));
        Assert.That(listing, Does.Match(@"-rw-r--r-- root/root +\d+ [-0-9: ]+\./usr/lib/gsupervisor/dotnet/GSupervisor\.StartupHook\.dll\n"), "readable by every user a child may run as");
        Assert.That(listing, Does.Contain("./usr/lib/systemd/system/gsupervisor@.service"));
        Assert.That(listing, Does.Contain("./usr/share/man/man1/gsupervisor.1.gz"));
        foreach (var example in new[] { "hello.service", "hello-activated.socket", "hello-activated.service", "hello-notify-reload.service" })
            Assert.That(listing, Does.Contain("./usr/share/doc/gsupervisor/examples/" + example));
        var (_, info) = Run("dpkg-deb", ["-f", _deb, "Package", "Version", "Architecture"]);
        Assert.That(info, Does.Contain("Package: gsupervisor"));
    }

    [Test]
    public void Packaged_binary_runs_without_the_source_tree_or_a_dotnet_runtime()
    {
        var binary = Path.Combine(_extracted.Path, "usr/bin/gsupervisor");
        var bare = new Dictionary<string, string> { ["PATH"] = "/usr/bin:/bin", ["DOTNET_ROOT"] = "/nonexistent", ["XDG_RUNTIME_DIR"] = _extracted.Path };
        var (code, output) = Run(binary, ["--version"], workingDirectory: "/", environment: bare);
        Assert.That(code, Is.EqualTo(0), output);
        Assert.That(output.Trim(), Does.Match(@"^gsupervisor \d+\.\d+\.\d+$"));

        // It supervises too, through the exec helper installed beside it.
        (code, output) = Run(binary, ["--listen", "127.0.0.1:0", "--ready", "delay:100ms", "--no-restart", "--",
            "/bin/sh", "-c", "echo LISTEN_PID=$LISTEN_PID pid=$$; sleep 0.3; exit 7"], workingDirectory: "/", environment: bare);
        Assert.That(code, Is.EqualTo(7), output);
        var m = System.Text.RegularExpressions.Regex.Match(output, @"LISTEN_PID=(\d+) pid=(\d+)");
        Assert.That(m.Success && m.Groups[1].Value == m.Groups[2].Value, Is.True, output);
    }

    [Test]
    public void Every_units_ExecReload_line_is_a_valid_command()
    {
        var binary = Path.Combine(_extracted.Path, "usr/bin/gsupervisor");
        var units = Directory.GetFiles(Path.Combine(_extracted.Path, "usr/share/doc/gsupervisor/examples"))
            .Append(Path.Combine(_extracted.Path, "usr/lib/systemd/system/gsupervisor@.service"));
        var checkedLines = 0;
        foreach (var unit in units)
        {
            foreach (var line in File.ReadAllLines(unit).Where(l => l.StartsWith("ExecReload=", StringComparison.Ordinal)))
            {
                var words = line["ExecReload=".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).ToList();
                var control = words.IndexOf("--control");
                if (control >= 0) words.RemoveRange(control, 2);
                words.AddRange(["--control", Path.Combine(_extracted.Path, "no-daemon.sock")]);
                var (code, output) = Run(binary, words);
                Assert.That(code, Is.EqualTo(69), $"{Path.GetFileName(unit)}: {line} -> {output}"); // parsed; no daemon there
                checkedLines++;
            }
        }
        Assert.That(checkedLines, Is.GreaterThanOrEqualTo(3));
    }

    [Test]
    public void Units_pass_systemd_analyze_verify()
    {
        Assert.That(File.Exists("/usr/bin/systemd-analyze"), Is.True, "systemd-analyze (Debian's systemd package; .ci/run installs it)");
        using var units = new TempDirectory();
        var binary = Path.Combine(_extracted.Path, "usr/bin/gsupervisor");
        var sources = Directory.GetFiles(Path.Combine(_extracted.Path, "usr/share/doc/gsupervisor/examples"))
            .Append(Path.Combine(_extracted.Path, "usr/lib/systemd/system/gsupervisor@.service"));
        foreach (var source in sources)
        {
            var name = Path.GetFileName(source) == "gsupervisor@.service" ? "gsupervisor@verify.service" : Path.GetFileName(source);
            File.WriteAllText(Path.Combine(units.Path, name), File.ReadAllText(source).Replace("/usr/bin/gsupervisor", binary));
        }
        var (_, versionText) = Run("systemctl", ["--version"]);
        var systemdVersion = int.Parse(System.Text.RegularExpressions.Regex.Match(versionText, @"systemd (\d+)").Groups[1].Value);
        foreach (var unit in Directory.GetFiles(units.Path))
        {
            var (code, output) = Run("systemd-analyze", ["verify", unit], workingDirectory: units.Path);
            var problems = output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                // Type=notify-reload and ReloadSignal= are systemd 253+; older ones warn and ignore them.
                .Where(l => !(systemdVersion < 253 && (l.Contains("notify-reload") || l.Contains("ReloadSignal"))))
                .ToList();
            Assert.That(code, Is.EqualTo(0), $"{Path.GetFileName(unit)}:\n{output}");
            Assert.That(problems, Is.Empty, Path.GetFileName(unit));
        }
    }
}
