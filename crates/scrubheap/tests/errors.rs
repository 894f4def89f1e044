//! Errors by concern: each concern's enum converts into `HeapError` with its message and
//! kind, and `HeapError::kind` names every case as the flat enum did.

use scrubheap::{
    one_error_of_each_kind, BlockReason, Blocker, ClaimError, FreeError, HeapError, Mfn, OfflineError, OfflineStop,
    RangeError,
};

/// The kind is the variant's name, as the `Debug` text of the innermost error starts
/// with it.
fn same_as_debug(e: &HeapError, inner: &dyn core::fmt::Debug) {
    let dbg = format!("{inner:?}");
    assert!(dbg.starts_with(e.kind()), "{dbg} is not of kind {}", e.kind());
    let rest = &dbg[e.kind().len()..];
    assert!(rest.is_empty() || rest.starts_with([' ', '(']), "{dbg}: kind {}", e.kind());
}

/// Every kind `HeapError::kind` returned when it was one flat enum, in its order: the
/// op log's error counts and the C status map are keyed by these strings.
const KINDS: [&str; 32] = [
    "InvalidConfig",
    "InvalidOrder",
    "NoSuchNode",
    "NoSuchCpu",
    "OutOfRange",
    "Unaligned",
    "CrossesNode",
    "OutOfMemory",
    "NotAllocated",
    "WrongOwner",
    "OrderTooLarge",
    "Pinned",
    "ClaimExceedsFree",
    "Busy",
    "NotPinned",
    "PinLimit",
    "MigrationRefused",
    "OfflineBlocked",
    "OfflineFinished",
    "NeedsScrubTicket",
    "NotOffline",
    "BadRange",
    "NeededByClaims",
    "Sealed",
    "NotSealed",
    "SealedMovable",
    "ClaimedByOthers",
    "NotFree",
    "CrossesZone",
    "TooManyChunks",
    "JobCancelled",
    "JobFinished",
];

#[test]
fn kinds_are_variant_names() {
    let all = one_error_of_each_kind();
    assert_eq!(all.len(), KINDS.len());
    for (e, kind) in all.iter().zip(KINDS) {
        assert_eq!(e.kind(), kind, "{e:?}");
        match e {
            HeapError::Range(i) => same_as_debug(e, i),
            HeapError::Free(i) => same_as_debug(e, i),
            HeapError::Claim(i) => same_as_debug(e, i),
            HeapError::Offline(i) => same_as_debug(e, i),
            _ => same_as_debug(e, e),
        }
    }
    let mut kinds: Vec<&str> = all.iter().map(HeapError::kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), KINDS.len(), "two variants share a kind");
}

/// A concern's error converts into `HeapError` with the same message and kind, and
/// `?` does the conversion.
#[test]
fn concerns_convert_with_their_message_and_kind() {
    fn lift<E>(r: Result<(), E>) -> Result<(), HeapError>
    where
        HeapError: From<E>,
    {
        Ok(r?)
    }
    let inner: [(String, &str, HeapError); 4] = [
        {
            let e = RangeError::Unaligned { mfn: Mfn(3), order: 1, size: 2 };
            (e.to_string(), e.kind(), lift(Err(e)).unwrap_err())
        },
        {
            let e = FreeError::NotAllocated { mfn: Mfn(3) };
            (e.to_string(), e.kind(), lift(Err(e)).unwrap_err())
        },
        {
            let e = ClaimError::NeededByClaims { mfn: Mfn(3), claimed: 2, free: 1 };
            (e.to_string(), e.kind(), lift(Err(e)).unwrap_err())
        },
        {
            let e = OfflineError::OfflineFinished { first: Mfn(3), count: 1 };
            (e.to_string(), e.kind(), lift(Err(e)).unwrap_err())
        },
    ];
    for (msg, kind, outer) in inner {
        assert_eq!(outer.to_string(), msg);
        assert_eq!(outer.kind(), kind);
    }
    // Today's texts, kept: one of each concern, word for word.
    let e: HeapError = FreeError::NotAllocated { mfn: Mfn(3) }.into();
    assert_eq!(e.to_string(), "frame 0x3 is not allocated (already free, offline or broken): double free?");
    let e: HeapError = RangeError::InvalidOrder { order: 19 }.into();
    assert_eq!(e.to_string(), "order 19 is above the largest order 18 (2^18 frames)");
    let e: HeapError = OfflineError::OfflineBlocked {
        first: Mfn(8),
        count: 4,
        stop: OfflineStop::Deadline,
        blockers: vec![Blocker { first: Mfn(9), frames: 1, owner: None, reason: BlockReason::NotReached }],
    }
    .into();
    assert_eq!(
        e.to_string(),
        "offline of 4 frames at 0x8 rolled back (deadline passed): 1 blocker(s), first 0x9+1 (not reached)"
    );
}
