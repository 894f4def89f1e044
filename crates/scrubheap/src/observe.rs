//! A hook for the runtime to time the heap's lock holds: the heap knows no clocks.

/// Told when a node lock is taken and released, on the thread that holds it.
pub trait LockObserver: Send + Sync {
    /// The node's lock was just taken.
    fn acquired(&self, node: usize);
    /// The node's lock is about to be released.
    fn released(&self, node: usize);
}
