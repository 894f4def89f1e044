//! Proof by counting that no operation runs more than one batch between two preemption
//! points: a [`FrameMemory`], a [`Preempt`] and a [`Migrator`] that count the frames
//! each operation touches (zeroed, checked, copied, or chunks walked in metadata) into
//! one [`SectionCounter`], which closes a section at every preemption point and keeps
//! the largest. Tests, the proptest models, the op-log replayer and its fuzz target use
//! them; the figure is work, not time, so it is the same on every machine.
//!
//! ```
//! use scrubheap::{AllocRequest, CountingMemory, CountingPreempt, DomId, Heap, HeapConfig, NullMemory, SectionCounter};
//! use std::sync::Arc;
//! let counter = Arc::new(SectionCounter::default());
//! let config = HeapConfig::uniform(1, 1 << 12).with_initially_dirty(true);
//! let heap = Heap::new(config, CountingMemory::new(NullMemory, counter.clone())).unwrap();
//! let preempt = CountingPreempt::new(counter.clone(), false);
//! heap.alloc_preemptible(&AllocRequest::new(12, DomId(1)), &preempt).unwrap().unwrap();
//! counter.close();
//! assert_eq!(counter.max(), 256); // 4096 dirty frames, at most one batch at a time
//! ```

use crate::heap::Extent;
use crate::memory::FrameMemory;
use crate::pin::Migrator;
use crate::preempt::Preempt;
use crate::types::{DomId, Mfn};
use alloc::sync::Arc;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::Relaxed;

/// Frames touched since the last preemption point, and the most touched in one section.
/// Shared by the counting doubles of one heap; meant for one thread at a time (a test, a
/// replayer): with several threads, their work lands in one another's sections.
#[derive(Debug, Default)]
pub struct SectionCounter {
    current: AtomicU64,
    max: AtomicU64,
    total: AtomicU64,
    sections: AtomicU64,
}

impl SectionCounter {
    /// Counts `frames` touched in the current section.
    pub fn touch(&self, frames: u64) {
        self.current.fetch_add(frames, Relaxed);
        self.total.fetch_add(frames, Relaxed);
    }

    /// Ends the current section (a preemption point, or an operation's return) and
    /// returns the frames it touched.
    pub fn close(&self) -> u64 {
        let frames = self.current.swap(0, Relaxed);
        self.max.fetch_max(frames, Relaxed);
        self.sections.fetch_add(1, Relaxed);
        frames
    }

    /// Frames touched in the current section so far.
    pub fn current(&self) -> u64 {
        self.current.load(Relaxed)
    }

    /// The most frames touched by one closed section.
    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }

    /// Frames touched in all.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Sections closed.
    pub fn sections(&self) -> u64 {
        self.sections.load(Relaxed)
    }

    /// Forgets everything counted.
    pub fn reset(&self) {
        for c in [&self.current, &self.max, &self.total, &self.sections] {
            c.store(0, Relaxed);
        }
    }
}

/// A [`FrameMemory`] that counts every frame zeroed, checked or copied into a
/// [`SectionCounter`], then asks the memory it wraps. An owner's own writes
/// ([`FrameMemory::fill`]) are not the heap's work and are not counted.
pub struct CountingMemory<M> {
    inner: M,
    counter: Arc<SectionCounter>,
}

impl<M: FrameMemory> CountingMemory<M> {
    /// Counts `inner`'s frames into `counter`.
    pub fn new(inner: M, counter: Arc<SectionCounter>) -> Self {
        CountingMemory { inner, counter }
    }

    /// The memory it wraps.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// The counter.
    pub fn counter(&self) -> &Arc<SectionCounter> {
        &self.counter
    }
}

impl<M: FrameMemory> FrameMemory for CountingMemory<M> {
    fn zero(&self, first: Mfn, count: u64) {
        self.counter.touch(count);
        self.inner.zero(first, count)
    }
    fn is_zero(&self, first: Mfn, count: u64) -> bool {
        self.counter.touch(count);
        self.inner.is_zero(first, count)
    }
    fn copy(&self, src: Mfn, dst: Mfn, count: u64) {
        self.counter.touch(count);
        self.inner.copy(src, dst, count)
    }
    fn fill(&self, first: Mfn, count: u64, owner: DomId) {
        self.inner.fill(first, count, owner)
    }
}

/// A [`Preempt`] that closes a section of its [`SectionCounter`] at every preemption
/// point, counts the chunks operations say they walked, and either always or never
/// asks to yield.
#[derive(Debug)]
pub struct CountingPreempt {
    counter: Arc<SectionCounter>,
    yields: bool,
}

impl CountingPreempt {
    /// Counts into `counter`; `yields` is what every [`Preempt::check`] answers.
    pub fn new(counter: Arc<SectionCounter>, yields: bool) -> Self {
        CountingPreempt { counter, yields }
    }
}

impl Preempt for CountingPreempt {
    fn check(&self) -> bool {
        self.counter.close();
        self.yields
    }
    fn walked(&self, chunks: u64) {
        self.counter.touch(chunks);
    }
}

/// A [`Migrator`] that counts every frame it is asked to copy into a [`SectionCounter`],
/// then asks the migrator it wraps.
pub struct CountingMigrator<'a> {
    inner: &'a dyn Migrator,
    counter: Arc<SectionCounter>,
}

impl<'a> CountingMigrator<'a> {
    /// Counts `inner`'s copies into `counter`.
    pub fn new(inner: &'a dyn Migrator, counter: Arc<SectionCounter>) -> Self {
        CountingMigrator { inner, counter }
    }
}

impl Migrator for CountingMigrator<'_> {
    fn copy(&self, owner: DomId, from: Extent, to: Extent, offset: u64, frames: u64) -> bool {
        self.counter.touch(frames);
        self.inner.copy(owner, from, to, offset, frames)
    }
    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        self.inner.switch(owner, from, to)
    }
}

impl<M: FrameMemory> crate::heap::Heap<M> {
    /// The most work any operation of this heap does between two preemption points, in
    /// the units a [`SectionCounter`] counts: one scrub batch of frames zeroed, checked or
    /// copied, plus [`CHUNKS_PER_STEP`](crate::CHUNKS_PER_STEP) chunks of metadata walked.
    /// The `xen` baseline policies scrub a whole chunk in place and do not keep it.
    pub fn section_bound(&self) -> u64 {
        let bound = self.config().scrub_batch + crate::offline::CHUNKS_PER_STEP as u64;
        debug_assert!(bound > self.config().scrub_batch);
        bound
    }
}
