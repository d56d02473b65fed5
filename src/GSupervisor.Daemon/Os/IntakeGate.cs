// Overview
// --------
// What lets the event loop stop the world for an in-place upgrade without losing anything. Every thread that
// takes something out of a kernel object (a datagram from the notify socket, a connection or a line from the
// handoff socket, a control request, a signal from the signalfd, bytes from a child's output pipe) does the
// taking *and* the posting to the loop inside one pass through the gate. The upgrade closes the gate: once
// closing returns, everything taken so far is in the loop's queue (or written on), and everything not taken is
// still in the kernel, in fds that cross the exec, where the new image takes it. Producers wait for readiness
// (poll, epoll, accept's queue) outside the gate, so a closed gate holds nobody who is not actually taking.

namespace GSupervisor.Daemon.Os;

internal sealed class IntakeGate
{
    private readonly ReaderWriterLockSlim _lock = new(LockRecursionPolicy.NoRecursion);

    /// <summary>A pass for one take-and-post; dispose it when the post is done. Waits while the gate is closed.</summary>
    public Pass Enter()
    {
        _lock.EnterReadLock();
        return new Pass(_lock);
    }

    /// <summary>Closes the gate once the passes under way are done; false if they take longer than <paramref name="timeout"/>.</summary>
    public bool TryClose(TimeSpan timeout) => _lock.TryEnterWriteLock(timeout);

    /// <summary>True on the thread that closed it, until it reopens it.</summary>
    public bool IsClosed => _lock.IsWriteLockHeld;

    /// <summary>Lets the producers go on (the upgrade was abandoned, or its exec failed).</summary>
    public void Reopen() => _lock.ExitWriteLock();

    public readonly struct Pass(ReaderWriterLockSlim held) : IDisposable
    {
        public void Dispose() => held.ExitReadLock();
    }
}
