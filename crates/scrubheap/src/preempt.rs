//! Preemption points. Long operations ask a [`Preempt`] between bounded steps.

/// Asked at every preemption point of a long operation.
pub trait Preempt {
    /// Called at each preemption point; returns true if the operation should stop here
    /// and let the caller yield (it keeps its progress).
    fn check(&self) -> bool;

    /// The most frames the operation should zero before its next preemption point, if
    /// the caller knows better than the heap's fixed `scrub_batch`: a caller that sees
    /// the bandwidth its writer actually gets (shared with other writers, guests, an
    /// interconnect) sizes it so that one batch stays within its time budget. The heap
    /// zeroes at most `min(scrub_batch, limit)` frames (and at least one) per batch.
    fn batch_limit(&self) -> Option<u64> {
        None
    }

    /// Told how many chunks of metadata an operation walked since its last preemption
    /// point (an offline's scan, an online's steps): at most
    /// [`CHUNKS_PER_STEP`](crate::CHUNKS_PER_STEP) between two points. Counting doubles use
    /// it to prove the bound; a runtime may ignore it.
    fn walked(&self, chunks: u64) {
        let _ = chunks;
    }
}

/// A [`Preempt`] that never asks to yield (or always, with `yield_after_batch`) and
/// limits each batch to `frames`: for callers that size batches by the bandwidth their
/// writer gets.
#[derive(Copy, Clone, Debug)]
pub struct BatchLimit {
    /// Frames per batch at most (0 is read as 1).
    pub frames: u64,
    /// Whether to stop after the first batch.
    pub yield_after_batch: bool,
}

impl Preempt for BatchLimit {
    fn check(&self) -> bool {
        self.yield_after_batch
    }
    fn batch_limit(&self) -> Option<u64> {
        Some(self.frames.max(1))
    }
}

/// The frames of one batch: the heap's `scrub_batch`, or less if `preempt` asks.
pub(crate) fn batch_frames(scrub_batch: u64, preempt: &dyn Preempt) -> u64 {
    let b = preempt.batch_limit().map_or(scrub_batch, |l| l.clamp(1, scrub_batch));
    debug_assert!(b >= 1 && b <= scrub_batch);
    b
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_limit_only_shrinks_the_batch() {
        let never = || false;
        assert_eq!(batch_frames(256, &never), 256);
        assert_eq!(batch_frames(256, &BatchLimit { frames: 16, yield_after_batch: false }), 16);
        assert_eq!(batch_frames(256, &BatchLimit { frames: 0, yield_after_batch: false }), 1);
        assert_eq!(batch_frames(256, &BatchLimit { frames: 1 << 20, yield_after_batch: true }), 256);
        assert!(BatchLimit { frames: 1, yield_after_batch: true }.check());
    }
}
