namespace GSupervisor.Core;

/// <summary>Linux signal numbers and names (x86-64 and arm64 agree on all of these).</summary>
public static class Signals
{
    public const int SIGHUP = 1, SIGINT = 2, SIGQUIT = 3, SIGKILL = 9, SIGUSR1 = 10, SIGUSR2 = 12,
        SIGPIPE = 13, SIGALRM = 14, SIGTERM = 15, SIGCHLD = 17, SIGCONT = 18, SIGSTOP = 19, SIGWINCH = 28;

    private static readonly (int Number, string Name)[] Known =
    [
        (1, "SIGHUP"), (2, "SIGINT"), (3, "SIGQUIT"), (4, "SIGILL"), (5, "SIGTRAP"), (6, "SIGABRT"), (7, "SIGBUS"),
        (8, "SIGFPE"), (9, "SIGKILL"), (10, "SIGUSR1"), (11, "SIGSEGV"), (12, "SIGUSR2"), (13, "SIGPIPE"),
        (14, "SIGALRM"), (15, "SIGTERM"), (16, "SIGSTKFLT"), (17, "SIGCHLD"), (18, "SIGCONT"), (19, "SIGSTOP"),
        (20, "SIGTSTP"), (21, "SIGTTIN"), (22, "SIGTTOU"), (23, "SIGURG"), (24, "SIGXCPU"), (25, "SIGXFSZ"),
        (26, "SIGVTALRM"), (27, "SIGPROF"), (28, "SIGWINCH"), (29, "SIGIO"), (30, "SIGPWR"), (31, "SIGSYS"),
    ];

    /// <summary>Signals that make sense as a stop signal for a service.</summary>
    private static readonly HashSet<int> StopSignals = [SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGUSR1, SIGUSR2, SIGALRM, SIGTERM, SIGWINCH, 30];

    public static string Name(int signal) =>
        Known.FirstOrDefault(k => k.Number == signal).Name ?? $"signal {signal}";

    /// <summary>Parses <c>SIGTERM</c>, <c>TERM</c>, <c>term</c> or <c>15</c> into a stop signal.</summary>
    public static bool TryParseStopSignal(string? text, out int signal, out string error)
    {
        signal = 0;
        error = "";
        var s = (text ?? "").Trim().ToUpperInvariant();
        if (int.TryParse(s, out var n))
        {
            signal = n;
        }
        else
        {
            var name = s.StartsWith("SIG", StringComparison.Ordinal) ? s : "SIG" + s;
            signal = Known.FirstOrDefault(k => k.Name == name).Number;
        }
        if (signal == 0)
        {
            error = $"unknown signal '{text}'; use a name such as SIGTERM, SIGINT, SIGQUIT or SIGUSR1";
            return false;
        }
        if (!StopSignals.Contains(signal))
        {
            error = $"{Name(signal)} cannot be used as a stop signal; use SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH or SIGKILL";
            return false;
        }
        return true;
    }
}
