//! [`Op`]: one op-log line as a value. Every writer builds `Op`s and prints them with
//! `Display`, which writes exactly the text [`crate::parse_line`] reads back.

use scrubheap::{AllocRequest, ClaimTarget, DomId, Mfn, NodePref, Policy};
use std::fmt;

/// A line that is not valid op-log syntax: the message says what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// The longest id an op log may use, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The name a log gives an allocation: 1 to [`MAX_ID_BYTES`] bytes, no whitespace and no
/// `#` (which would end the line's words or start a comment).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(String);

impl Id {
    /// `name` as an id, or why it cannot be one.
    ///
    /// ```
    /// use scrubheap_oplog::Id;
    /// assert_eq!(Id::new("d1e0").unwrap().as_str(), "d1e0");
    /// assert!(Id::new("two words").is_err());
    /// assert!(Id::new("").is_err());
    /// ```
    pub fn new(name: impl Into<String>) -> Result<Id, ParseError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ParseError("id= is empty".into()));
        }
        if name.len() > MAX_ID_BYTES {
            return Err(ParseError(format!("an id of {} bytes: ids have at most {MAX_ID_BYTES}", name.len())));
        }
        if name.chars().any(|c| c.is_whitespace() || c == '#') {
            return Err(ParseError(format!("id {name:?} holds whitespace or `#`: use letters, digits, `_` or `-`")));
        }
        Ok(Id(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One op-log line (DESIGN section 6); see the crate documentation for the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `heap nodes=N frames_per_node=F [movable_from=M] [policy=P]`: replace the heap.
    Heap {
        /// Number of nodes.
        nodes: u64,
        /// Frames of each node; node i owns `[i*F, (i+1)*F)`.
        frames_per_node: u64,
        /// Offset in each node where its Movable zone begins.
        movable_from: Option<u64>,
        /// The scrubbing policy (the default when the line names none).
        policy: Policy,
    },
    /// `alloc id=X dom=D order=K [node=N] [exact] [movable] [noscrub]`.
    Alloc {
        /// The name the log gives the allocation.
        id: Id,
        /// The request. The text has no `sealed`: a log records ordinary allocations only
        /// (sealed ones belong to the PoD layer, whose own lines record them), so a
        /// sealed request is written, and replayed, as an ordinary one.
        req: AllocRequest,
    },
    /// `alloc-at id=X mfn=M order=K dom=D`: exactly the aligned range at M, if every frame
    /// of it is free ([`scrubheap::Heap::alloc_at`]).
    AllocAt {
        /// The name the log gives the allocation.
        id: Id,
        /// First frame of the range.
        mfn: Mfn,
        /// Size of the range.
        order: u8,
        /// Who will own it.
        dom: DomId,
    },
    /// `free id=X`: free all that remains of X.
    FreeId {
        /// The allocation.
        id: Id,
    },
    /// `free id=X offset=O order=K`: free the aligned part at offset O of X.
    FreePart {
        /// The allocation.
        id: Id,
        /// Frames from the allocation's first frame.
        offset: u64,
        /// Size of the part.
        order: u8,
    },
    /// `free mfn=M order=K dom=D`.
    FreeMfn {
        /// First frame.
        mfn: Mfn,
        /// Size.
        order: u8,
        /// Who frees.
        dom: DomId,
    },
    /// `scrub node=N pages=P`: what an idle CPU of node N does with a budget of P frames.
    Scrub {
        /// The scrubbing node.
        node: usize,
        /// Budget in frames.
        pages: u64,
    },
    /// `claim dom=D node=N pages=P` or `claim dom=D global pages=P`: set that one entry of
    /// D's claim set, keeping the others (0 pages drops the entry).
    Claim {
        /// The claiming domain.
        dom: DomId,
        /// Which entry.
        target: ClaimTarget,
        /// Its new size in frames.
        pages: u64,
    },
    /// `claim dom=D cancel`: drop all of D's claims.
    ClaimCancel {
        /// The domain.
        dom: DomId,
    },
    /// `check`: run the full invariant checker.
    Check,
    /// `pod dom=D max_pages=N target=T [node=X]`: create a populate-on-demand guest.
    Pod {
        /// The guest.
        dom: DomId,
        /// Size of its p2m.
        max_pages: u64,
        /// Frames behind it.
        target: u64,
        /// Preferred node.
        node: Option<usize>,
    },
    /// `touch dom=D gfn=G [data]`: the guest accesses a frame (and writes it, with `data`).
    Touch {
        /// The guest.
        dom: DomId,
        /// The guest frame.
        gfn: u64,
        /// Whether it writes non-zero bytes into the page.
        data: bool,
    },
    /// `balloon dom=D gfn=G order=K`: decrease reservation.
    Balloon {
        /// The guest.
        dom: DomId,
        /// First guest frame.
        gfn: u64,
        /// Size.
        order: u8,
    },
    /// `pod_target dom=D target=T`.
    PodTarget {
        /// The guest.
        dom: DomId,
        /// Its new target.
        target: u64,
    },
    /// `destroy dom=D`: destroy a PoD guest.
    Destroy {
        /// The guest.
        dom: DomId,
    },
    /// `pin id=X offset=O order=K` (`pin: true`) or `unpin ...` (`pin: false`).
    Pin {
        /// The allocation.
        id: Id,
        /// Frames from the allocation's first frame.
        offset: u64,
        /// Size of the part.
        order: u8,
        /// Pin, or unpin.
        pin: bool,
    },
    /// `offline mfn=M count=C [steps=S]`.
    Offline {
        /// First frame.
        mfn: Mfn,
        /// Frames.
        count: u64,
        /// A deadline in steps, if any.
        steps: Option<u64>,
    },
    /// `online mfn=M count=C`.
    Online {
        /// First frame.
        mfn: Mfn,
        /// Frames.
        count: u64,
    },
    /// `broken mfn=M`.
    Broken {
        /// The frame.
        mfn: Mfn,
    },
}

/// Writes the line without its end: frames (`mfn=`) in `0x` hex, every other number in
/// decimal, optional words only when present.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Heap { nodes, frames_per_node, movable_from, policy } => {
                write!(f, "heap nodes={nodes} frames_per_node={frames_per_node}")?;
                if let Some(m) = movable_from {
                    write!(f, " movable_from={m}")?;
                }
                write!(f, " policy={policy}")
            }
            Op::Alloc { id, req } => write_alloc(f, id, req),
            Op::AllocAt { id, mfn, order, dom } => {
                write!(f, "alloc-at id={id} mfn={:#x} order={order} dom={}", mfn.0, dom.0)
            }
            Op::FreeId { id } => write!(f, "free id={id}"),
            Op::FreePart { id, offset, order } => write!(f, "free id={id} offset={offset} order={order}"),
            Op::FreeMfn { mfn, order, dom } => write!(f, "free mfn={:#x} order={order} dom={}", mfn.0, dom.0),
            Op::Scrub { node, pages } => write!(f, "scrub node={node} pages={pages}"),
            Op::Claim { dom, target: ClaimTarget::Node(n), pages } => {
                write!(f, "claim dom={} node={n} pages={pages}", dom.0)
            }
            Op::Claim { dom, target: ClaimTarget::Global, pages } => {
                write!(f, "claim dom={} global pages={pages}", dom.0)
            }
            Op::ClaimCancel { dom } => write!(f, "claim dom={} cancel", dom.0),
            Op::Check => f.write_str("check"),
            Op::Pod { dom, max_pages, target, node } => {
                write!(f, "pod dom={} max_pages={max_pages} target={target}", dom.0)?;
                node.map_or(Ok(()), |n| write!(f, " node={n}"))
            }
            Op::Touch { dom, gfn, data } => {
                write!(f, "touch dom={} gfn={gfn}{}", dom.0, if *data { " data" } else { "" })
            }
            Op::Balloon { dom, gfn, order } => write!(f, "balloon dom={} gfn={gfn} order={order}", dom.0),
            Op::PodTarget { dom, target } => write!(f, "pod_target dom={} target={target}", dom.0),
            Op::Destroy { dom } => write!(f, "destroy dom={}", dom.0),
            Op::Pin { id, offset, order, pin } => {
                let verb = if *pin { "pin" } else { "unpin" };
                write!(f, "{verb} id={id} offset={offset} order={order}")
            }
            Op::Offline { mfn, count, steps } => {
                write!(f, "offline mfn={:#x} count={count}", mfn.0)?;
                steps.map_or(Ok(()), |s| write!(f, " steps={s}"))
            }
            Op::Online { mfn, count } => write!(f, "online mfn={:#x} count={count}", mfn.0),
            Op::Broken { mfn } => write!(f, "broken mfn={:#x}", mfn.0),
        }
    }
}

fn write_alloc(f: &mut fmt::Formatter<'_>, id: &Id, req: &AllocRequest) -> fmt::Result {
    write!(f, "alloc id={id} dom={} order={}", req.owner.0, req.order)?;
    match req.node {
        NodePref::Any => {}
        NodePref::Prefer(n) => write!(f, " node={n}")?,
        NodePref::Exact(n) => write!(f, " node={n} exact")?,
    }
    if req.movable {
        f.write_str(" movable")?;
    }
    if !req.scrub {
        f.write_str(" noscrub")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_line;
    use proptest::prelude::*;

    /// Any id the type allows: 1 to 24 characters, none whitespace or `#` (`=` included).
    fn id() -> impl Strategy<Value = Id> {
        "[^\\s#]{1,24}".prop_map(|s| Id::new(s).expect("the pattern makes valid ids"))
    }

    fn policy() -> impl Strategy<Value = Policy> {
        proptest::sample::select(Policy::ALL.to_vec())
    }

    fn req() -> impl Strategy<Value = AllocRequest> {
        let node = prop_oneof![
            Just(NodePref::Any),
            any::<usize>().prop_map(NodePref::Prefer),
            any::<usize>().prop_map(NodePref::Exact)
        ];
        (any::<u8>(), any::<u32>(), node, any::<bool>(), any::<bool>()).prop_map(
            |(order, dom, node, movable, scrub)| AllocRequest {
                order,
                owner: DomId(dom),
                node,
                movable,
                scrub,
                // Not part of the text (see `Op::Alloc`).
                sealed: false,
            },
        )
    }

    fn heap_ops() -> impl Strategy<Value = Op> {
        let target = prop_oneof![Just(ClaimTarget::Global), any::<usize>().prop_map(ClaimTarget::Node)];
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<Option<u64>>(), policy()).prop_map(|(n, f, m, p)| Op::Heap {
                nodes: n,
                frames_per_node: f,
                movable_from: m,
                policy: p
            }),
            (id(), req()).prop_map(|(id, req)| Op::Alloc { id, req }),
            id().prop_map(|id| Op::FreeId { id }),
            (id(), any::<u64>(), any::<u8>()).prop_map(|(id, offset, order)| Op::FreePart { id, offset, order }),
            (any::<u64>(), any::<u8>(), any::<u32>()).prop_map(|(m, order, d)| Op::FreeMfn {
                mfn: Mfn(m),
                order,
                dom: DomId(d)
            }),
            (any::<usize>(), any::<u64>()).prop_map(|(node, pages)| Op::Scrub { node, pages }),
            (any::<u32>(), target, any::<u64>()).prop_map(|(d, target, pages)| Op::Claim {
                dom: DomId(d),
                target,
                pages
            }),
            any::<u32>().prop_map(|d| Op::ClaimCancel { dom: DomId(d) }),
            Just(Op::Check),
        ]
    }

    fn other_ops() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<Option<usize>>())
                .prop_map(|(d, max_pages, target, node)| { Op::Pod { dom: DomId(d), max_pages, target, node } }),
            (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(d, gfn, data)| Op::Touch {
                dom: DomId(d),
                gfn,
                data
            }),
            (any::<u32>(), any::<u64>(), any::<u8>()).prop_map(|(d, gfn, order)| Op::Balloon {
                dom: DomId(d),
                gfn,
                order
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(d, target)| Op::PodTarget { dom: DomId(d), target }),
            any::<u32>().prop_map(|d| Op::Destroy { dom: DomId(d) }),
            (id(), any::<u64>(), any::<u8>(), any::<bool>()).prop_map(|(id, offset, order, pin)| Op::Pin {
                id,
                offset,
                order,
                pin
            }),
            (any::<u64>(), any::<u64>(), any::<Option<u64>>()).prop_map(|(m, count, steps)| Op::Offline {
                mfn: Mfn(m),
                count,
                steps
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(m, count)| Op::Online { mfn: Mfn(m), count }),
            any::<u64>().prop_map(|m| Op::Broken { mfn: Mfn(m) }),
            (id(), any::<u64>(), any::<u8>(), any::<u32>()).prop_map(|(id, m, order, d)| Op::AllocAt {
                id,
                mfn: Mfn(m),
                order,
                dom: DomId(d)
            }),
        ]
    }

    /// Every variant, every field over its whole range.
    fn any_op() -> impl Strategy<Value = Op> {
        prop_oneof![heap_ops(), other_ops()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn display_parses_back_to_the_same_op(op in any_op()) {
            let line = op.to_string();
            prop_assert!(!line.contains('\n'), "{line:?}");
            prop_assert_eq!(parse_line(&line), Ok(Some(op.clone())), "{}", line);
            // A comment after the line changes nothing.
            prop_assert_eq!(parse_line(&format!("{line}  # note")), Ok(Some(op)));
        }
    }

    #[test]
    fn ids_that_would_not_read_back_are_refused() {
        for bad in ["", "a b", "a#b", "a\tb", "a\u{2003}b"] {
            assert!(Id::new(bad).is_err(), "{bad:?}");
        }
        assert!(Id::new("x".repeat(MAX_ID_BYTES)).is_ok());
        assert!(Id::new("x".repeat(MAX_ID_BYTES + 1)).is_err());
        assert_eq!(Id::new("a=b").unwrap().as_str(), "a=b");
    }

    #[test]
    fn the_text_writers_used_before_ops_is_what_display_writes() {
        // The exact lines the host and the generator wrote by hand before they built ops.
        let req = AllocRequest { node: NodePref::Prefer(1), movable: true, ..AllocRequest::new(9, DomId(3)) };
        let a = Op::Alloc { id: Id::new("d3e0").unwrap(), req };
        assert_eq!(a.to_string(), "alloc id=d3e0 dom=3 order=9 node=1 movable");
        let f = Op::FreeMfn { mfn: Mfn(0x1200), order: 0, dom: DomId(3) };
        assert_eq!(f.to_string(), "free mfn=0x1200 order=0 dom=3");
        let p = Op::Pod { dom: DomId(2), max_pages: 4096, target: 3072, node: Some(0) };
        assert_eq!(p.to_string(), "pod dom=2 max_pages=4096 target=3072 node=0");
        assert_eq!(Op::Touch { dom: DomId(2), gfn: 7, data: true }.to_string(), "touch dom=2 gfn=7 data");
        assert_eq!(Op::Offline { mfn: Mfn(16), count: 8, steps: None }.to_string(), "offline mfn=0x10 count=8");
        let at = Op::AllocAt { id: Id::new("r").unwrap(), mfn: Mfn(0x200), order: 9, dom: DomId(4) };
        assert_eq!(at.to_string(), "alloc-at id=r mfn=0x200 order=9 dom=4");
    }
}
