//! Preemption points. Long operations ask a [`Preempt`] between bounded steps.

/// Asked at every preemption point of a long operation.
pub trait Preempt {
    /// Called at each preemption point; returns true if the operation should stop here
    /// and let the caller yield (it keeps its progress).
    fn check(&self) -> bool;
}

/// Never asks to yield; preemption points are still counted by callers that wrap it.
#[derive(Copy, Clone, Debug, Default)]
pub struct NeverPreempt;

impl Preempt for NeverPreempt {
    fn check(&self) -> bool {
        false
    }
}

impl<F: Fn() -> bool> Preempt for F {
    fn check(&self) -> bool {
        self()
    }
}
