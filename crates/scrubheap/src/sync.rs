//! The locks and atomics the heap uses, behind one facade: `spin` by default (no_std),
//! `parking_lot` with the `parking_lot` feature (hosts, where a lock holder can be
//! descheduled), and loom's model-checked types under `cfg(loom)`.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, AtomicU64};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64};

/// A value built once, on first use, then shared: the fast path's record segments. Only
/// ever initialised under a node lock, so no thread spins on another's initialisation
/// (which would stall a loom model); readers that find it empty do not wait.
pub(crate) type Once<T> = spin::Once<T>;

/// A mutex whose `lock` returns the guard directly.
pub(crate) struct Mutex<T>(Inner<T>);

#[cfg(loom)]
type Inner<T> = loom::sync::Mutex<T>;
#[cfg(all(not(loom), feature = "parking_lot"))]
type Inner<T> = parking_lot::Mutex<T>;
#[cfg(all(not(loom), not(feature = "parking_lot")))]
type Inner<T> = spin::Mutex<T>;

#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
#[cfg(all(not(loom), feature = "parking_lot"))]
pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;
#[cfg(all(not(loom), not(feature = "parking_lot")))]
pub(crate) type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub fn new(v: T) -> Self {
        Mutex(Inner::new(v))
    }

    #[cfg(loom)]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().expect("a heap lock holder panicked")
    }

    #[cfg(not(loom))]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock()
    }
}

/// A spin lock whatever the features (loom's mutex under loom), for locks held a few
/// instructions and almost never contended: the fast path's per-CPU slots and blocks.
/// Its unlock is a plain store, where parking_lot's is a compare-and-swap.
pub(crate) struct SpinMutex<T>(SpinInner<T>);

#[cfg(loom)]
type SpinInner<T> = loom::sync::Mutex<T>;
#[cfg(not(loom))]
type SpinInner<T> = spin::Mutex<T>;

#[cfg(loom)]
pub(crate) type SpinGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
#[cfg(not(loom))]
pub(crate) type SpinGuard<'a, T> = spin::MutexGuard<'a, T>;

impl<T> SpinMutex<T> {
    pub fn new(v: T) -> Self {
        SpinMutex(SpinInner::new(v))
    }

    #[cfg(loom)]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.0.lock().expect("a fast-path lock holder panicked")
    }

    #[cfg(not(loom))]
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.0.lock()
    }
    /// The guard if the lock is free now; `None` without waiting otherwise (for a lock
    /// taken out of the lock order, which must not wait).
    #[cfg(loom)]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.0.try_lock().ok()
    }

    /// The guard if the lock is free now; `None` without waiting otherwise (for a lock
    /// taken out of the lock order, which must not wait).
    #[cfg(not(loom))]
    #[inline]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.0.try_lock()
    }
}

/// What a waiter does between two polls of a condition another thread will make true.
#[inline]
pub(crate) fn relax() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// `T` alone on a pair of cache lines (a line and the one an adjacent-line prefetcher
/// fetches with it): for what one CPU writes often and another reads or writes, so that
/// neither stalls on the other's unrelated data.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> core::ops::Deref for Padded<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}
