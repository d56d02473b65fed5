namespace GSupervisor.Daemon.Os;

/// <summary>
/// The one rule for who may talk over a gsupervisor socket (control, notify, handoff), and whom the control
/// verbs believe: the expected uid (the daemon's own, or the children's), or root.
/// </summary>
internal static class PeerRule
{
    public static bool Trusted(long uid, long expected) => uid == expected || uid == 0;
}
