//! The parser: one line of text to an [`Op`]. It reads exactly what [`Op`]'s `Display`
//! writes, plus comments, blank lines, `0x` hex in every number, and words in any order.

use crate::op::{Id, Op, ParseError};
use scrubheap::{AllocRequest, ClaimTarget, DomId, Mfn, NodePref, Policy};

/// The most words a line may have after its verb (no valid line has more than 7); keeps a
/// hostile line from costing more than linear time.
const MAX_WORDS: usize = 16;

/// The words of one line after its verb: `key=value` pairs and bare flags, each of which
/// must be used exactly once.
struct Args<'a> {
    toks: Vec<(&'a str, Option<&'a str>)>,
    used: Vec<bool>,
}

fn perr<T>(msg: String) -> Result<T, ParseError> {
    Err(ParseError(msg))
}

/// A decimal or `0x` hexadecimal `u64`, digits only.
fn number(key: &str, s: &str) -> Result<u64, ParseError> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return perr(format!("{key}={s}: not a decimal or 0x hexadecimal number"));
    }
    u64::from_str_radix(digits, radix).or_else(|_| perr(format!("{key}={s}: does not fit in 64 bits")))
}

impl<'a> Args<'a> {
    fn new<I: Iterator<Item = &'a str>>(words: I) -> Result<Self, ParseError> {
        let mut toks: Vec<(&str, Option<&str>)> = Vec::new();
        for w in words {
            if toks.len() == MAX_WORDS {
                return perr(format!("more than {MAX_WORDS} words after the operation"));
            }
            let t = match w.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (w, None),
            };
            if toks.iter().any(|&(k, _)| k == t.0) {
                return perr(format!("`{}` is given twice", t.0));
            }
            toks.push(t);
        }
        let used = vec![false; toks.len()];
        Ok(Args { toks, used })
    }

    fn value(&mut self, key: &str) -> Option<&'a str> {
        let i = self.toks.iter().position(|&(k, v)| k == key && v.is_some())?;
        self.used[i] = true;
        self.toks[i].1
    }

    fn flag(&mut self, name: &str) -> bool {
        match self.toks.iter().position(|&(k, v)| k == name && v.is_none()) {
            Some(i) => {
                self.used[i] = true;
                true
            }
            None => false,
        }
    }

    fn num(&mut self, key: &str) -> Result<Option<u64>, ParseError> {
        self.value(key).map(|v| number(key, v)).transpose()
    }

    fn req_num(&mut self, key: &str) -> Result<u64, ParseError> {
        self.num(key)?.map_or_else(|| perr(format!("missing {key}=")), Ok)
    }

    fn order(&mut self) -> Result<u8, ParseError> {
        let o = self.req_num("order")?;
        u8::try_from(o).or_else(|_| perr(format!("order={o}: orders are small numbers (0 to 18)")))
    }

    fn dom(&mut self) -> Result<DomId, ParseError> {
        let d = self.req_num("dom")?;
        u32::try_from(d).map(DomId).or_else(|_| perr(format!("dom={d}: domain ids are 32-bit")))
    }

    fn node(&mut self) -> Result<Option<usize>, ParseError> {
        match self.num("node")? {
            None => Ok(None),
            Some(n) => usize::try_from(n).map(Some).or_else(|_| perr(format!("node={n}: too large"))),
        }
    }

    fn id(&mut self) -> Result<Id, ParseError> {
        match self.value("id") {
            Some(id) => Id::new(id),
            None => perr("missing id=".into()),
        }
    }

    /// Fails on any word not used.
    fn finish(self) -> Result<(), ParseError> {
        match self.toks.iter().zip(&self.used).find(|(_, &u)| !u) {
            None => Ok(()),
            Some(((k, Some(v)), _)) => perr(format!("unexpected `{k}={v}`")),
            Some(((k, None), _)) => perr(format!("unexpected `{k}`")),
        }
    }
}

/// Parses one line: `Ok(None)` for a blank or comment-only line.
///
/// ```
/// use scrubheap_oplog::{parse_line, Id, Op};
/// assert_eq!(parse_line("  # just a comment").unwrap(), None);
/// assert_eq!(parse_line("free id=a1 offset=0x200 order=9").unwrap(),
///     Some(Op::FreePart { id: Id::new("a1").unwrap(), offset: 512, order: 9 }));
/// assert!(parse_line("free id=a1 order=9").is_err());
/// ```
pub fn parse_line(line: &str) -> Result<Option<Op>, ParseError> {
    let text = line.split('#').next().unwrap_or("");
    let mut words = text.split_whitespace();
    let Some(verb) = words.next() else { return Ok(None) };
    let mut a = Args::new(words)?;
    let op = match verb {
        "heap" => heap(&mut a)?,
        "alloc" => alloc(&mut a)?,
        "alloc-at" => {
            let id = a.id()?;
            Op::AllocAt { id, mfn: Mfn(a.req_num("mfn")?), order: a.order()?, dom: a.dom()? }
        }
        "free" => free(&mut a)?,
        "scrub" => {
            let node = a.node()?.map_or_else(|| perr("missing node=".into()), Ok)?;
            Op::Scrub { node, pages: a.req_num("pages")? }
        }
        "claim" => claim(&mut a)?,
        "check" => Op::Check,
        "pod" => {
            let dom = a.dom()?;
            Op::Pod { dom, max_pages: a.req_num("max_pages")?, target: a.req_num("target")?, node: a.node()? }
        }
        "touch" => Op::Touch { dom: a.dom()?, gfn: a.req_num("gfn")?, data: a.flag("data") },
        "balloon" => {
            let dom = a.dom()?;
            Op::Balloon { dom, gfn: a.req_num("gfn")?, order: a.order()? }
        }
        "pod_target" => Op::PodTarget { dom: a.dom()?, target: a.req_num("target")? },
        "destroy" => Op::Destroy { dom: a.dom()? },
        "pin" | "unpin" => {
            let id = a.id()?;
            let offset = a.req_num("offset")?;
            Op::Pin { id, offset, order: a.order()?, pin: verb == "pin" }
        }
        "offline" => Op::Offline { mfn: Mfn(a.req_num("mfn")?), count: a.req_num("count")?, steps: a.num("steps")? },
        "online" => Op::Online { mfn: Mfn(a.req_num("mfn")?), count: a.req_num("count")? },
        "broken" => Op::Broken { mfn: Mfn(a.req_num("mfn")?) },
        other => return perr(format!("unknown operation `{other}`")),
    };
    a.finish()?;
    Ok(Some(op))
}

fn heap(a: &mut Args<'_>) -> Result<Op, ParseError> {
    let nodes = a.req_num("nodes")?;
    let frames_per_node = a.req_num("frames_per_node")?;
    let movable_from = a.num("movable_from")?;
    let policy = match a.value("policy") {
        None => Policy::default(),
        Some(p) => p.parse().or_else(|e| perr(format!("{e}")))?,
    };
    Ok(Op::Heap { nodes, frames_per_node, movable_from, policy })
}

fn alloc(a: &mut Args<'_>) -> Result<Op, ParseError> {
    let id = a.id()?;
    let mut req = AllocRequest::new(a.order()?, a.dom()?);
    let exact = a.flag("exact");
    req.node = match (a.node()?, exact) {
        (Some(n), true) => NodePref::Exact(n),
        (Some(n), false) => NodePref::Prefer(n),
        (None, false) => NodePref::Any,
        (None, true) => return perr("`exact` needs node=".into()),
    };
    req.movable = a.flag("movable");
    req.scrub = !a.flag("noscrub");
    Ok(Op::Alloc { id, req })
}

fn free(a: &mut Args<'_>) -> Result<Op, ParseError> {
    if a.toks.iter().any(|&(k, _)| k == "mfn") {
        let mfn = Mfn(a.req_num("mfn")?);
        return Ok(Op::FreeMfn { mfn, order: a.order()?, dom: a.dom()? });
    }
    let id = a.id()?;
    Ok(match a.num("offset")? {
        Some(offset) => Op::FreePart { id, offset, order: a.order()? },
        None => Op::FreeId { id },
    })
}

fn claim(a: &mut Args<'_>) -> Result<Op, ParseError> {
    let dom = a.dom()?;
    if a.flag("cancel") {
        return Ok(Op::ClaimCancel { dom });
    }
    let target = match (a.node()?, a.flag("global")) {
        (Some(n), false) => ClaimTarget::Node(n),
        (None, true) => ClaimTarget::Global,
        (Some(_), true) => return perr("a claim is either node=N or global, not both".into()),
        (None, false) => return perr("a claim needs node=N, global or cancel".into()),
    };
    Ok(Op::Claim { dom, target, pages: a.req_num("pages")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_comments() {
        assert_eq!(parse_line(""), Ok(None));
        assert_eq!(parse_line("   \t "), Ok(None));
        assert_eq!(parse_line("# alloc id=a dom=1 order=0"), Ok(None));
        assert_eq!(parse_line("scrub node=0x1 pages=0X10 # trailing"), Ok(Some(Op::Scrub { node: 1, pages: 16 })));
        assert_eq!(parse_line("scrub node=1 pages=18446744073709551615").map(|_| ()), Ok(()));
        for bad in [
            "scrub node=1 pages=18446744073709551616",
            "scrub node=-1 pages=1",
            "scrub node=+1 pages=1",
            "scrub node=0x pages=1",
            "scrub node= pages=1",
            "scrub node=1 pages=1 pages=2",
            "scrub node=1",
            "scrub node=1 pages=1 extra",
            "scrub node=1 pages=1 what=3",
            "alloc id=a dom=1 order=256",
            "alloc id=a dom=4294967296 order=0",
            "alloc id= dom=1 order=0",
            "alloc id=a dom=1 order=0 exact",
            "free id=a offset=1",
            "free id=a order=1",
            "free mfn=1 order=0",
            "claim dom=1 pages=3",
            "claim dom=1 node=0 global pages=3",
            "claim dom=1 cancel pages=3",
            "check now",
            "heap nodes=1",
            "heap nodes=1 frames_per_node=64 policy=linux",
            "frobnicate",
        ] {
            assert!(parse_line(bad).is_err(), "{bad} parsed");
        }
        let long: String = std::iter::once("check".into()).chain((0..100_000).map(|i| format!(" k{i}=1"))).collect();
        assert!(parse_line(&long).is_err(), "a line of many words is refused, and quickly");
    }
}
