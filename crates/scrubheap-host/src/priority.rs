//! Scrubber scheduling priority, and what a thread holds while it works on frames.
//!
//! A background scrubber should only use CPU time nobody else wants, but it takes the
//! heap's node locks (for metadata only) between its batches. At `SCHED_IDLE` a scrubber
//! the host OS preempts while it holds a node lock keeps that lock until no other thread
//! wants the CPU: every allocator of the node waits behind it (a priority inversion; the
//! default run saw 21-72 ms holds). [`ScrubPriority`] names the ways out measured side by
//! side in `docs/results.md`.
//!
//! This module also counts the node locks the calling thread holds (told by the pool's
//! lock observer, [`lock_taken`] / [`lock_released`]) so that the arena can assert, at
//! every zero, check and copy of frames, that no node lock is held ([`outside_node_locks`]):
//! the heap keeps its locks for metadata only, and this proves it on every call of a run.
//! It is also where a [`ScrubPriority::Boost`] thread drops back to `SCHED_IDLE`.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How background scrubber threads are scheduled.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum ScrubPriority {
    /// `SCHED_IDLE` throughout: runs only when nothing else wants the CPU.
    Idle,
    /// Normal scheduling at the lowest normal priority (nice 19): a small share of the
    /// CPU under load, but not starved outright while it holds a lock.
    Nice19,
    /// `SCHED_IDLE` while it zeroes; real-time (`SCHED_FIFO` 1, or normal priority if
    /// the host refuses it) from the moment it takes a node lock until it next works on
    /// frames outside the locks: a lock that boosts its holder, so a descheduled holder
    /// cannot keep a lock while normal threads run. The default, chosen by the figures in
    /// `docs/results.md`.
    #[default]
    Boost,
    /// Normal priority (nice 0), as any other thread.
    Normal,
}

impl ScrubPriority {
    /// Every choice, in the order `--scrub-priority` lists them.
    pub const ALL: [ScrubPriority; 4] =
        [ScrubPriority::Idle, ScrubPriority::Nice19, ScrubPriority::Boost, ScrubPriority::Normal];

    /// The name `--scrub-priority` takes.
    pub fn name(self) -> &'static str {
        match self {
            ScrubPriority::Idle => "idle",
            ScrubPriority::Nice19 => "nice19",
            ScrubPriority::Boost => "boost",
            ScrubPriority::Normal => "normal",
        }
    }

    /// Sets the calling thread's scheduling as this choice says; false if the host
    /// refused (the thread then runs at whatever it had).
    pub(crate) fn apply(self) -> bool {
        SCRUBBER.with(|b| b.set(true));
        BOOSTABLE.with(|b| b.set(self == ScrubPriority::Boost));
        BASE_POLICY.with(|b| b.set(libc::SCHED_IDLE));
        match self {
            ScrubPriority::Idle | ScrubPriority::Boost => set_policy(libc::SCHED_IDLE, 0),
            ScrubPriority::Nice19 => set_policy(libc::SCHED_OTHER, 0) && set_nice(19),
            ScrubPriority::Normal => set_policy(libc::SCHED_OTHER, 0) && set_nice(0),
        }
    }
}

impl fmt::Display for ScrubPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scrubber priority name that is not one of [`ScrubPriority::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown scrubber priority '{0}': use idle, nice19, boost or normal")]
pub struct UnknownPriority(pub String);

impl FromStr for ScrubPriority {
    type Err = UnknownPriority;
    fn from_str(s: &str) -> Result<Self, UnknownPriority> {
        ScrubPriority::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| UnknownPriority(s.into()))
    }
}

thread_local! {
    /// Node locks this thread holds now.
    static NODE_LOCKS: Cell<u32> = const { Cell::new(0) };
    /// This thread runs at `SCHED_IDLE` but is boosted while it holds a node lock.
    static BOOSTABLE: Cell<bool> = const { Cell::new(false) };
    /// The policy a boosted thread goes back to.
    static BASE_POLICY: Cell<libc::c_int> = const { Cell::new(libc::SCHED_OTHER) };
    /// This thread is boosted now.
    static BOOSTED: Cell<bool> = const { Cell::new(false) };
    /// This thread is a background scrubber (it applied a [`ScrubPriority`]).
    static SCRUBBER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is a background scrubber.
pub(crate) fn is_scrubber() -> bool {
    SCRUBBER.with(Cell::get)
}

/// Boosts the host refused `SCHED_FIFO` for (no `CAP_SYS_NICE` or `RLIMIT_RTPRIO`), which
/// fell back to normal priority.
static FIFO_REFUSED: AtomicU64 = AtomicU64::new(0);

/// How many boosts so far fell back to normal priority because the host refused
/// `SCHED_FIFO`.
pub fn fifo_refused() -> u64 {
    FIFO_REFUSED.load(Relaxed)
}

/// The calling thread took a node lock (called by the pool's lock observer).
pub(crate) fn lock_taken() {
    NODE_LOCKS.with(|n| n.set(n.get() + 1));
    if BOOSTABLE.with(Cell::get) && !BOOSTED.with(Cell::get) {
        let fifo = set_policy(libc::SCHED_FIFO, 1);
        if !fifo {
            FIFO_REFUSED.fetch_add(1, Relaxed);
        }
        let boosted = fifo || set_policy(libc::SCHED_OTHER, 0);
        BOOSTED.with(|b| b.set(boosted));
    }
}

/// The calling thread is about to release a node lock (a release the count did not see
/// taken, as when an observer is installed mid-hold, leaves it at 0).
pub(crate) fn lock_released() {
    NODE_LOCKS.with(|n| n.set(n.get().saturating_sub(1)));
}

/// Node locks the calling thread holds.
pub fn node_locks_held() -> u32 {
    NODE_LOCKS.with(Cell::get)
}

/// The calling thread is about to `what` (zero, check or copy frames): asserts that it
/// holds no node lock, and drops a boosted scrubber back to `SCHED_IDLE`.
///
/// # Panics
/// If the thread holds a node lock: frame work under a node lock would make every
/// allocator of the node wait for it.
pub(crate) fn outside_node_locks(what: &str) {
    let held = node_locks_held();
    assert!(held == 0, "{what} while holding {held} node lock(s): node locks are for metadata only");
    unboost();
}

/// From now on the calling thread (a normal-priority one: a guest builder, the
/// hot-remove) is raised like a [`ScrubPriority::Boost`] scrubber while it holds a node
/// lock, and goes back to normal priority when it next works on frames or leaves the
/// heap ([`crate::instrument::PreemptRecorder::exit`]). Returns false (and changes
/// nothing) for a thread that is not at `SCHED_OTHER`.
pub fn boost_lock_holds() -> bool {
    if current().0 != libc::SCHED_OTHER {
        return false;
    }
    BASE_POLICY.with(|b| b.set(libc::SCHED_OTHER));
    BOOSTABLE.with(|b| b.set(true));
    true
}

/// Drops a boosted thread back to its own policy, once it holds no node lock (no-op
/// otherwise).
pub(crate) fn unboost() {
    if BOOSTED.with(Cell::get) && node_locks_held() == 0 {
        set_policy(BASE_POLICY.with(Cell::get), 0);
        BOOSTED.with(|b| b.set(false));
    }
}

/// Sets the calling thread's scheduling policy and static priority (0 but for the
/// real-time policies); false if refused.
fn set_policy(policy: libc::c_int, priority: libc::c_int) -> bool {
    // SAFETY: sched_param is plain data; pid 0 names the calling thread; the call only
    // reads the struct.
    unsafe {
        let p = libc::sched_param { sched_priority: priority };
        libc::sched_setscheduler(0, policy, &p) == 0
    }
}

/// Sets the calling thread's nice value; false if refused.
fn set_nice(nice: libc::c_int) -> bool {
    // SAFETY: gettid takes no arguments; setpriority with PRIO_PROCESS and a thread id
    // sets that one thread's nice value on Linux and touches no memory of ours.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0
    }
}

/// The calling thread's scheduling policy and nice value.
pub fn current() -> (libc::c_int, libc::c_int) {
    // SAFETY: as in `set_nice`; both calls only report about the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        (libc::sched_getscheduler(0), libc::getpriority(libc::PRIO_PROCESS, tid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nonsense_is_refused() {
        for p in ScrubPriority::ALL {
            assert_eq!(p.name().parse::<ScrubPriority>().unwrap(), p);
        }
        let e = "low".parse::<ScrubPriority>().unwrap_err();
        assert!(e.to_string().contains("nice19"), "{e}");
    }

    #[test]
    fn each_choice_sets_the_policy_it_names() {
        let seen = std::thread::spawn(|| {
            ScrubPriority::ALL
                .into_iter()
                .map(|p| {
                    let ok = p.apply();
                    (p, ok, current())
                })
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        for (p, ok, (policy, nice)) in seen {
            if !ok {
                eprintln!("the host refused {p}; not checked");
                continue;
            }
            match p {
                ScrubPriority::Idle | ScrubPriority::Boost => assert_eq!(policy, libc::SCHED_IDLE, "{p}"),
                ScrubPriority::Nice19 => assert_eq!((policy, nice), (libc::SCHED_OTHER, 19), "{p}"),
                ScrubPriority::Normal => assert_eq!(policy, libc::SCHED_OTHER, "{p}"),
            }
        }
    }

    #[test]
    fn a_boosted_thread_runs_normal_while_it_holds_a_lock() {
        let seen = std::thread::spawn(|| {
            if !ScrubPriority::Boost.apply() {
                return None;
            }
            lock_taken();
            let held = current().0;
            lock_released();
            outside_node_locks("zero frames");
            Some((held, current().0, node_locks_held()))
        })
        .join()
        .unwrap();
        if let Some((held, after, locks)) = seen {
            assert!(held == libc::SCHED_FIFO || held == libc::SCHED_OTHER, "boosted while holding: {held}");
            assert_eq!((after, locks), (libc::SCHED_IDLE, 0));
        }
    }

    #[test]
    fn a_normal_thread_may_ask_to_be_boosted_while_it_holds_a_lock() {
        let seen = std::thread::spawn(|| {
            assert!(boost_lock_holds());
            lock_taken();
            let held = current().0;
            unboost();
            let still = current().0;
            lock_released();
            unboost();
            (held, still, current().0)
        })
        .join()
        .unwrap();
        assert_ne!(seen.0, libc::SCHED_IDLE);
        assert_eq!(seen.1, seen.0, "not dropped while a lock is held");
        assert_eq!(seen.2, libc::SCHED_OTHER);
    }

    #[test]
    fn frame_work_under_a_node_lock_panics() {
        let r = std::thread::spawn(|| {
            lock_taken();
            outside_node_locks("zero frames");
        })
        .join();
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("zero frames while holding 1 node lock"), "{msg}");
    }
}
