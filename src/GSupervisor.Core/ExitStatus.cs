namespace GSupervisor.Core;

/// <summary>How a child process ended: an exit code, or the signal that killed it.</summary>
public readonly record struct ExitStatus(int? Code, int? Signal, bool CoreDumped = false)
{
    public static ExitStatus Exited(int code) => new(code, null);
    public static ExitStatus Killed(int signal, bool coreDumped = false) => new(null, signal, coreDumped);

    /// <summary>The status a shell would report: the code, or 128 + signal.</summary>
    public int ShellCode => Code ?? 128 + (Signal ?? 0);

    public bool Success => Code == 0;

    public override string ToString() => Code is { } code
        ? $"exit code {code}"
        : $"signal {Signals.Name(Signal ?? 0)}{(CoreDumped ? " (core dumped)" : "")}";
}
