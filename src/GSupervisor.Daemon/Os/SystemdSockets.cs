// Overview
// --------
// Socket activation for the supervisor itself: `--listen systemd` adopts every socket systemd passed
// (LISTEN_FDS at fds 3.., valid only when LISTEN_PID is this process, named by LISTEN_FDNAMES), and
// `--listen systemd:NAME` those with FileDescriptorName=NAME. So privileged ports and .socket units work
// without root in the supervisor. The adopted fds are moved like bound ones; the originals at 3.. are closed.

using System.Globalization;
using GSupervisor.Core;
using Mono.Unix.Native;

namespace GSupervisor.Daemon.Os;

internal static class SystemdSockets
{
    private const int SO_ACCEPTCONN = 30, SO_DOMAIN = 39, SO_TYPE = 3;
    private const int AF_UNIX = 1, AF_INET = 2, AF_INET6 = 10, SOCK_STREAM = 1;

    public sealed record Passed(int Fd, string Name);

    /// <summary>The sockets systemd passed to this process, empty when none (or when they were meant for another pid).</summary>
    public static IReadOnlyList<Passed> FromEnvironment()
    {
        var pid = Environment.GetEnvironmentVariable("LISTEN_PID");
        if (pid != Environment.ProcessId.ToString(CultureInfo.InvariantCulture)) return [];
        if (!int.TryParse(Environment.GetEnvironmentVariable("LISTEN_FDS"), NumberStyles.None, CultureInfo.InvariantCulture, out var count)) return [];
        if (count > 4096)
            throw new StartupException(ExitCodes.Usage, $"LISTEN_FDS={count} is not a believable number of sockets");
        var names = Environment.GetEnvironmentVariable("LISTEN_FDNAMES")?.Split(':') ?? [];
        return Enumerable.Range(0, count).Select(i => new Passed(3 + i, i < names.Length && names[i].Length > 0 ? names[i] : "unknown")).ToList();
    }

    public static IEnumerable<BoundListener> Adopt(ListenSpec spec, IReadOnlyList<Passed> passed)
    {
        if (passed.Count == 0)
            throw new StartupException(ExitCodes.Unavailable,
                $"--listen {spec}: systemd passed no sockets (LISTEN_FDS unset, or LISTEN_PID is not this process); run gsupervisor from a unit with a .socket unit, or use an address");
        var chosen = passed.Where(p => spec.SystemdName is null || p.Name == spec.SystemdName).ToList();
        if (chosen.Count == 0)
            throw new StartupException(ExitCodes.Unavailable,
                $"--listen {spec}: systemd passed no socket named '{spec.SystemdName}' (it passed: {string.Join(", ", passed.Select(p => p.Name))}); check FileDescriptorName= in the .socket unit");
        if (spec.Name is not null && chosen.Count > 1)
            throw new StartupException(ExitCodes.Usage,
                $"--listen {spec.Text}: one name cannot cover the {chosen.Count} sockets systemd passed; name each with FileDescriptorName=");
        foreach (var p in chosen)
        {
            if (Option(p.Fd, SO_TYPE) != SOCK_STREAM || Option(p.Fd, SO_ACCEPTCONN) != 1)
                throw new StartupException(ExitCodes.Usage,
                    $"--listen {spec}: fd {p.Fd} ('{p.Name}') from systemd is not a listening stream socket; use ListenStream= in the .socket unit");
            var moved = Libc.fcntl(p.Fd, Libc.F_DUPFD_CLOEXEC, 3);
            if (moved < 0) throw new StartupException(ExitCodes.OsError, $"cannot take over fd {p.Fd} from systemd: {ErrorNumbers.Describe(ErrorNumbers.Last)}");
            var adopted = spec with { Name = spec.Name ?? (p.Name == "unknown" ? null : p.Name) };
            yield return new BoundListener(adopted, moved, Describe(moved), null, 0);
        }
    }

    /// <summary>Closes the fds systemd placed at 3.. once every adopted one has its own copy.</summary>
    public static void CloseOriginals(IReadOnlyList<Passed> passed)
    {
        foreach (var p in passed) Syscall.close(p.Fd);
    }

    private static unsafe int Option(int fd, int name)
    {
        int value = 0;
        uint length = sizeof(int);
        return Libc.getsockopt(fd, Libc.SOL_SOCKET, name, &value, &length) == 0 ? value : -1;
    }

    private static string Describe(int fd) => Option(fd, SO_DOMAIN) switch
    {
        AF_INET => Listeners.LocalAddress(fd, v6: false),
        AF_INET6 => Listeners.LocalAddress(fd, v6: true),
        AF_UNIX => UnixAddress(fd),
        _ => $"fd {fd}",
    };

    private static string UnixAddress(int fd)
    {
        var address = new SockaddrUn();
        return Syscall.getsockname(fd, address) == 0 ? "unix:" + (address.IsLinuxAbstractNamespace ? "@" : "") + address.Path : "unix socket";
    }
}
