namespace GSupervisor.Daemon;

/// <summary>The supervisor's exit codes (sysexits.h where one fits; 126/127 as shells use them).</summary>
internal static class ExitCodes
{
    public const int Ok = 0;
    /// <summary>The first generation never became ready (when it exited with a code, that code is used instead).</summary>
    public const int ServiceFailed = 1;
    public const int Usage = 64;
    /// <summary>A file named on the command line (--env-file) cannot be read as what it should be.</summary>
    public const int DataError = 65;
    /// <summary>A file or directory named on the command line (--env-file, --chdir) does not exist or cannot be read.</summary>
    public const int NoInput = 66;
    /// <summary>An address is in use or not available on this host.</summary>
    public const int Unavailable = 69;
    public const int Software = 70;
    public const int OsError = 71;
    /// <summary>A file of gsupervisor's own installation (the exec helper) or /proc is missing.</summary>
    public const int OsFile = 72;
    /// <summary>A Unix socket path cannot be created (missing directory, a non-socket file in the way).</summary>
    public const int CannotCreate = 73;
    public const int NoPermission = 77;
    public const int NotExecutable = 126;
    public const int NotFound = 127;
}

/// <summary>A problem found before any child runs: one line for the user and the exit code that goes with it.</summary>
internal sealed class StartupException(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
