using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace GSupervisor.Core;

/// <summary>What kind of socket a <see cref="ListenSpec"/> asks for.</summary>
public enum ListenKind
{
    /// <summary>TCP on a given IPv4 or IPv6 address.</summary>
    Tcp,
    /// <summary>TCP on all interfaces: dual-stack IPv6 (v4-mapped), or 0.0.0.0 where IPv6 is off.</summary>
    TcpAnyAddress,
    /// <summary>A Unix stream socket at a path, or in the abstract namespace when the path starts with '@'.</summary>
    Unix,
    /// <summary>Sockets passed to the supervisor by systemd socket activation: all of them, or those named <see cref="ListenSpec.SystemdName"/>.</summary>
    Systemd,
}

/// <summary>
/// One <c>--listen</c> argument: <c>[NAME=]ADDRESS</c>, where ADDRESS is <c>:PORT</c>, <c>*:PORT</c>,
/// <c>HOST:PORT</c> (an IPv4 literal or <c>localhost</c>), <c>[V6ADDR]:PORT</c>, <c>unix:PATH[,mode=OCTAL]</c>,
/// or <c>systemd</c> / <c>systemd:NAME</c> (adopt the sockets systemd passed to the supervisor).
/// </summary>
public sealed record ListenSpec(string Text, string? Name, ListenKind Kind, IPAddress? Address, int Port, string? UnixPath, int? UnixMode)
{
    /// <summary>The longest path a Unix socket address holds (sun_path is 108 bytes with its terminating NUL).</summary>
    public const int MaxUnixPathBytes = 107;

    /// <summary>systemd's limit on a file-descriptor name.</summary>
    public const int MaxNameLength = 255;

    /// <summary>The name a listener has in LISTEN_FDNAMES: its given name, or "unknown" as systemd writes for unnamed sockets.</summary>
    public string FdName => Name ?? "unknown";

    /// <summary>For <see cref="ListenKind.Systemd"/>: the FileDescriptorName to adopt, or null for every passed socket.</summary>
    public string? SystemdName { get; init; }

    public override string ToString() => Kind switch
    {
        ListenKind.Systemd => SystemdName is null ? "systemd" : "systemd:" + SystemdName,
        ListenKind.Unix => "unix:" + UnixPath,
        ListenKind.TcpAnyAddress => $"*:{Port}",
        _ => Address!.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{Address}]:{Port}" : $"{Address}:{Port}",
    };

    /// <summary>Parses one <c>--listen</c> value; on failure <paramref name="error"/> names the problem and the fix in one line.</summary>
    public static bool TryParse(string? text, out ListenSpec? spec, out string error)
    {
        spec = null;
        error = "";
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "--listen needs an address, e.g. --listen :8080, --listen 127.0.0.1:8080 or --listen unix:/run/app.sock";
            return false;
        }

        string? name = null;
        var address = text;
        var eq = text.IndexOf('=');
        if (eq >= 0 && !text.StartsWith("unix:", StringComparison.Ordinal))
        {
            name = text[..eq];
            address = text[(eq + 1)..];
            if (!IsValidName(name, out var nameError))
            {
                error = $"--listen '{text}': {nameError}";
                return false;
            }
        }

        if (address.StartsWith("unix:", StringComparison.Ordinal))
            return TryParseUnix(text, name, address["unix:".Length..], out spec, out error);
        if (address == "systemd" || address.StartsWith("systemd:", StringComparison.Ordinal))
        {
            var systemdName = address == "systemd" ? null : address["systemd:".Length..];
            if (systemdName is { Length: 0 } || systemdName is not null && systemdName.Contains(':'))
            {
                error = $"--listen '{text}': write systemd for every socket systemd passes, or systemd:NAME for those with FileDescriptorName=NAME";
                return false;
            }
            spec = new ListenSpec(text, name, ListenKind.Systemd, null, 0, null, null) { SystemdName = systemdName };
            return true;
        }
        return TryParseTcp(text, name, address, out spec, out error);
    }

    private static bool IsValidName(string name, out string error)
    {
        error = "";
        if (name.Length == 0)
            error = "the listener name before '=' is empty; write NAME=ADDRESS, e.g. web=:8080";
        else if (name.Length > MaxNameLength)
            error = $"the listener name is longer than {MaxNameLength} characters";
        else if (name == "unknown")
            error = "'unknown' is reserved for unnamed listeners; choose another name";
        else if (!name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.'))
            error = $"listener name '{name}' may hold only letters, digits, '_', '-' and '.'";
        return error.Length == 0;
    }

    private static bool TryParseUnix(string text, string? name, string rest, out ListenSpec? spec, out string error)
    {
        spec = null;
        error = "";
        int? mode = null;
        var comma = rest.LastIndexOf(",mode=", StringComparison.Ordinal);
        if (comma >= 0)
        {
            var modeText = rest[(comma + ",mode=".Length)..];
            rest = rest[..comma];
            if (modeText.Length is < 3 or > 4 || !modeText.All(c => c is >= '0' and <= '7'))
            {
                error = $"--listen '{text}': mode '{modeText}' is not an octal file mode such as 0660";
                return false;
            }
            mode = Convert.ToInt32(modeText, 8);
        }
        if (rest.Length == 0)
        {
            error = $"--listen '{text}': the Unix socket path is empty; write unix:/run/app.sock";
            return false;
        }
        var abstractName = rest[0] == '@';
        if (!abstractName && rest[0] != '/')
        {
            error = $"--listen '{text}': the Unix socket path must be absolute (start with '/'), or '@name' for the abstract namespace";
            return false;
        }
        if (abstractName && mode is not null)
        {
            error = $"--listen '{text}': abstract sockets have no file mode; drop ',mode='";
            return false;
        }
        if (rest.Contains('\0'))
        {
            error = $"--listen '{text}': the Unix socket path contains a NUL byte";
            return false;
        }
        var bytes = Encoding.UTF8.GetByteCount(rest);
        if (bytes > MaxUnixPathBytes)
        {
            error = $"--listen '{text}': the Unix socket path is {bytes} bytes, longer than the {MaxUnixPathBytes} a socket address holds; use a shorter path";
            return false;
        }
        if (!abstractName && rest.EndsWith('/'))
        {
            error = $"--listen '{text}': the Unix socket path names a directory; add a file name, e.g. {rest}app.sock";
            return false;
        }
        spec = new ListenSpec(text, name, ListenKind.Unix, null, 0, rest, mode);
        return true;
    }

    private static bool TryParseTcp(string text, string? name, string address, out ListenSpec? spec, out string error)
    {
        spec = null;
        error = "";
        string host;
        string portText;
        if (address.StartsWith('['))
        {
            var close = address.IndexOf(']');
            if (close < 0 || close + 1 >= address.Length || address[close + 1] != ':')
            {
                error = $"--listen '{text}': an IPv6 address is written [ADDRESS]:PORT, e.g. [::1]:8080";
                return false;
            }
            host = address[1..close];
            portText = address[(close + 2)..];
            if (!IPAddress.TryParse(host, out var v6) || v6.AddressFamily != AddressFamily.InterNetworkV6)
            {
                error = $"--listen '{text}': '{host}' is not an IPv6 address";
                return false;
            }
        }
        else
        {
            var colon = address.LastIndexOf(':');
            if (colon < 0)
            {
                error = LooksLikeCommand(address)
                    ? $"--listen '{text}' is not an address; if it is the command, put '--' before it: gsupervisor --listen :8080 -- {address} ..."
                    : $"--listen '{text}': give a port, e.g. :8080, 127.0.0.1:8080, [::1]:8080 or unix:/run/app.sock";
                return false;
            }
            host = address[..colon];
            portText = address[(colon + 1)..];
            if (host.Contains(':'))
            {
                error = $"--listen '{text}': put an IPv6 address in brackets, e.g. [{host}]:{portText}";
                return false;
            }
        }

        if (!TryParsePort(portText, out var port))
        {
            error = portText.Length == 0
                ? $"--listen '{text}': the port is missing, e.g. {address}8080"
                : $"--listen '{text}': port '{portText}' is not a number from 0 to 65535";
            return false;
        }

        if (host is "" or "*")
        {
            spec = new ListenSpec(text, name, ListenKind.TcpAnyAddress, null, port, null, null);
            return true;
        }
        if (host == "localhost")
        {
            spec = new ListenSpec(text, name, ListenKind.Tcp, IPAddress.Loopback, port, null, null);
            return true;
        }
        if (!IPAddress.TryParse(host, out var ip) || (ip.AddressFamily == AddressFamily.InterNetwork && host.Count(c => c == '.') != 3))
        {
            error = $"--listen '{text}': '{host}' is not an IP address; use an address such as 127.0.0.1, [::1] or :PORT for all interfaces (host names are not resolved)";
            return false;
        }
        spec = new ListenSpec(text, name, ListenKind.Tcp, ip, port, null, null);
        return true;
    }

    private static bool TryParsePort(string text, out int port)
    {
        port = 0;
        return text.Length is > 0 and <= 5 && text.All(char.IsAsciiDigit)
            && int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out port) && port <= 65535;
    }

    private static bool LooksLikeCommand(string address) =>
        address.Length > 0 && !address.Any(char.IsAsciiDigit) || address.Contains('/');

    /// <summary>
    /// Checks a set of specs for conflicts: the same address twice, or the same name twice.
    /// </summary>
    public static bool TryValidateSet(IReadOnlyList<ListenSpec> specs, out string error)
    {
        error = "";
        for (var i = 0; i < specs.Count; i++)
        {
            for (var j = 0; j < i; j++)
            {
                var a = specs[i];
                var b = specs[j];
                if (a.Name is not null && a.Name == b.Name)
                {
                    error = $"--listen '{a.Text}' and '{b.Text}' have the same name '{a.Name}'; names must be unique";
                    return false;
                }
                if (Overlaps(a, b))
                {
                    error = $"--listen '{a.Text}' and '{b.Text}' ask for the same address; give each address once";
                    return false;
                }
            }
        }
        return true;
    }

    private static bool Overlaps(ListenSpec a, ListenSpec b)
    {
        if (a.Kind == ListenKind.Systemd || b.Kind == ListenKind.Systemd)
            return a.Kind == b.Kind && (a.SystemdName is null || b.SystemdName is null || a.SystemdName == b.SystemdName);
        if (a.Kind == ListenKind.Unix || b.Kind == ListenKind.Unix)
            return a.Kind == b.Kind && a.UnixPath == b.UnixPath;
        if (a.Port != b.Port || a.Port == 0) return false;
        if (a.Kind == ListenKind.TcpAnyAddress || b.Kind == ListenKind.TcpAnyAddress) return true;
        return a.Address!.Equals(b.Address);
    }
}
