//! What the handlers build from a body, charged before it is built.
//!
//! A request is charged from its head: what the endpoint builds from an
//! ordinary body of that length (`request_cost`), a fair guess for
//! ordinary bodies and far short for some: a JSON array of zeros (`[0,0,0,…]`) parses into 32 bytes per two of body, more as
//! its buffer doubles, and one-entry objects into a B-tree node of 632
//! bytes per eight; `op=reverse` turned each invalid byte into a three-byte
//! U+FFFD twice over; `op=words` held a hash table of 50 bytes or more per
//! two-byte word. A user's trial took a 16 MiB budget to 148 MiB committed
//! with 32 MB of such JSON, and under `FROSTHEAP_MAX=100M` the process
//! aborted on an allocation it could not make.
//!
//! Charging every body its worst case (80 times its size and more) would
//! cut the capacity of ordinary requests as much. Instead each buffer the
//! handler builds is counted as it is built, and the request's charge is
//! grown to cover it *before* it is allocated ([`Charge::cover`]): 503 when
//! the budget cannot (the memory is spent now: a retry may fit), 413 when
//! the request would need more than the whole budget. So what the
//! handlers hold stays within what the budget charged, and the bound
//! `--max-memory` + the connections' memory + the process's own holds
//! whatever the body. Counted: each buffer's capacity, rounded up as the
//! allocator rounds it ([`block`]); a buffer being moved to a larger one
//! counts both while both exist.

use std::cell::Cell;
use std::fmt;

use frostheap_budget::Permit;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::state::MIN_CHARGE;

/// Why a handler could not build its answer within the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The memory is spent now (503: a retry may fit).
    OverBudget,
    /// More than the whole budget (413: no retry can fit).
    WholeBudget,
}

/// The bytes a request's permit holds, grown as its handler builds. No
/// permit (`--no-budget`): nothing is counted, nothing refused.
pub(super) struct Charge<'p> {
    permit: Option<&'p Permit>,
    charged: Cell<usize>,
}

impl<'p> Charge<'p> {
    pub(super) fn new(permit: Option<&'p Permit>) -> Charge<'p> {
        Charge {
            permit,
            charged: Cell::new(permit.map_or(0, Permit::bytes)),
        }
    }

    /// Makes the charge cover `held` bytes (the request's least charge
    /// included): grows the permit when it holds less.
    pub(super) fn cover(&self, held: usize) -> Result<(), Refused> {
        let Some(p) = self.permit else {
            return Ok(());
        };
        let charged = self.charged.get();
        if held <= charged {
            return Ok(());
        }
        if held > p.budget().total() {
            return Err(Refused::WholeBudget);
        }
        if !p.try_grow(held - charged) {
            return Err(Refused::OverBudget);
        }
        self.charged.set(held);
        Ok(())
    }
}

/// The bytes of the block the allocator gives for `n` bytes: frostheap's
/// own figure ([`frostheap::Heap::block_size`]: the size class, or whole
/// 64 KiB pages past 128 KiB), except that the classes between 1 KiB and 4 KiB
/// that only heaps past 8 MiB have (1152, 1408, ..., 3840) are counted as
/// the next class, which a smaller heap serves them from. (A request of
/// 1 KiB to 128 KiB may also be given a free block of one of the next two
/// classes when its own has none: not counted.) Until 2026-12-06 this was
/// an estimate of its own, `n + n/4` rounded to 16 (4 KiB pages past
/// 128 KiB), which counted a 64 KiB buffer as 80 KiB and a 1 MB one as
/// 1,003,520 bytes where it takes 1 MiB: every 64 KiB transform grew its charge past
/// its head's, and under `--overload wait` at 10× load 83% of the
/// admitted requests ended in 503 at that point.
pub(super) fn block(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let Ok(layout) = std::alloc::Layout::from_size_align(n, 1) else {
        // Past what any allocation may ask for.
        return n;
    };
    let b = frostheap::Heap::block_size(layout);
    if b > 1 << 10 && b < 4 << 10 {
        // The four-way split's step between 2^k and 2^(k+1) is 2^k / 4.
        b.next_multiple_of((1 << b.ilog2()) / 4)
    } else {
        b
    }
}

/// A JSON document parsed into a [`Value`], and the bytes it holds.
pub(super) struct Parsed {
    pub(super) value: Value,
    pub(super) bytes: usize,
}

/// Why a body did not parse.
pub(super) enum ParseError {
    Invalid(serde_json::Error),
    Refused(Refused),
}

/// The bytes of the nodes of a map's B-tree (`BTreeMap<String, Value>`):
/// a leaf holds eleven keys and values, an internal node twelve edges
/// more.
const MAP_LEAF: usize = 11 * (size_of::<String>() + size_of::<Value>()) + 16;
const MAP_INTERNAL: usize = MAP_LEAF + 12 * 8;

/// The bytes of a map of `n` entries, at most: one leaf up to eleven;
/// past that, every node but the root holds five entries or more, and an
/// insertion that splits a node allocates one more.
fn map_bytes(n: usize) -> usize {
    match n {
        0 => 0,
        1..=11 => block(MAP_LEAF),
        n => (2 + n / 5) * block(MAP_INTERNAL),
    }
}

/// Parses `body` into a [`Value`], covering each buffer of the tree with
/// `charge` before it is allocated; `held` is what the request holds
/// besides (its least charge and its body's buffer).
pub(super) fn parse_json(
    body: &[u8],
    held: usize,
    charge: &Charge<'_>,
) -> Result<Parsed, ParseError> {
    // serde_json decodes strings with escapes into a scratch buffer of
    // the deserializer's, which grows by doubling up to twice the longest
    // such string: covered from the start, as it is allocated inside the
    // parser.
    let scratch = if body.contains(&b'\\') {
        block(2 * body.len())
    } else {
        0
    };
    let tree = Tree {
        charge,
        base: held + scratch,
        bytes: Cell::new(0),
        refused: Cell::new(None),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Node(&tree).deserialize(&mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    match (parsed, tree.refused.get()) {
        (_, Some(r)) => Err(ParseError::Refused(r)),
        (Err(e), None) => Err(ParseError::Invalid(e)),
        (Ok(value), None) => Ok(Parsed {
            value,
            bytes: tree.bytes.get(),
        }),
    }
}

/// Serializes `value` into a buffer covered by `charge` as it grows;
/// `held` is what the request holds besides.
pub(super) fn to_json(value: &Value, held: usize, charge: &Charge<'_>) -> Result<Vec<u8>, Refused> {
    let mut out = Output {
        buf: Vec::new(),
        held,
        charge,
        refused: None,
    };
    match serde_json::to_writer(&mut out, value) {
        Ok(()) => Ok(out.buf),
        Err(_) => Err(out.refused.unwrap_or(Refused::OverBudget)),
    }
}

/// The parse's count: the tree's bytes so far, above `base`.
struct Tree<'c, 'p> {
    charge: &'c Charge<'p>,
    base: usize,
    bytes: Cell<usize>,
    refused: Cell<Option<Refused>>,
}

impl Tree<'_, '_> {
    /// `more` bytes are about to be allocated.
    fn hold<E: serde::de::Error>(&self, more: usize) -> Result<(), E> {
        let bytes = self.bytes.get() + more;
        match self.charge.cover(self.base + bytes) {
            Ok(()) => {
                self.bytes.set(bytes);
                Ok(())
            }
            Err(r) => {
                self.refused.set(Some(r));
                Err(E::custom("over the memory budget"))
            }
        }
    }

    /// `less` bytes were freed.
    fn release(&self, less: usize) {
        self.bytes.set(self.bytes.get() - less);
    }

    fn string<E: serde::de::Error>(&self, s: &str) -> Result<String, E> {
        self.hold(block(s.len()))?;
        Ok(s.to_owned())
    }
}

/// A JSON value, built as serde_json's own `Value` visitor builds it.
#[derive(Clone, Copy)]
struct Node<'t, 'c, 'p>(&'t Tree<'c, 'p>);

impl<'de> DeserializeSeed<'de> for Node<'_, '_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.string(s).map(Value::String)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items: Vec<Value> = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            if items.len() == items.capacity() {
                // Grown as `Vec` grows it, the old buffer and the new one
                // counted while both exist.
                let old = block(items.capacity() * size_of::<Value>());
                let cap = (items.capacity() * 2).max(4);
                self.0.hold(block(cap * size_of::<Value>()))?;
                items.reserve_exact(cap - items.len());
                self.0.release(old);
            }
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // serde_json's `Map` is a `BTreeMap` (no `preserve_order`).
        let mut entries = Map::new();
        let mut nodes = 0;
        while let Some(key) = map.next_key_seed(Key(self.0))? {
            let value = map.next_value_seed(self)?;
            let want = map_bytes(entries.len() + 1);
            if want > nodes {
                self.0.hold(want - nodes)?;
                nodes = want;
            }
            entries.insert(key, value);
        }
        Ok(Value::Object(entries))
    }
}

/// An object's key.
struct Key<'t, 'c, 'p>(&'t Tree<'c, 'p>);

impl<'de> DeserializeSeed<'de> for Key<'_, '_, '_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_, '_, '_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<String, E> {
        self.0.string(s)
    }
}

/// The output buffer of [`to_json`].
struct Output<'c, 'p> {
    buf: Vec<u8>,
    held: usize,
    charge: &'c Charge<'p>,
    refused: Option<Refused>,
}

impl std::io::Write for Output<'_, '_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let need = self.buf.len() + data.len();
        if need > self.buf.capacity() {
            let cap = need.max(self.buf.capacity() * 2).max(1 << 10);
            let both = block(self.buf.capacity()) + block(cap);
            if let Err(r) = self.charge.cover(self.held + both) {
                self.refused = Some(r);
                return Err(std::io::Error::other("over the memory budget"));
            }
            self.buf.reserve_exact(cap - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes of `body` as text, characters in reverse order; each invalid
/// UTF-8 sequence becomes one U+FFFD, as `String::from_utf8_lossy` makes
/// it. Its length is known before it is built (`reversed_len`), so the
/// answer is one buffer of that size and nothing else: the lossy string
/// and the collected characters held three times the body each when the
/// body was invalid UTF-8.
pub(super) fn reverse(body: &[u8], charge: &Charge<'_>, held: usize) -> Result<Vec<u8>, Refused> {
    const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
    let len: usize = body
        .utf8_chunks()
        .map(|c| c.valid().len() + if c.invalid().is_empty() { 0 } else { 3 })
        .sum();
    charge.cover(held + block(len))?;
    let mut out = vec![0u8; len];
    let mut end = len;
    let mut put = |bytes: &[u8]| {
        out[end - bytes.len()..end].copy_from_slice(bytes);
        end -= bytes.len();
    };
    for chunk in body.utf8_chunks() {
        let mut buf = [0u8; 4];
        for c in chunk.valid().chars() {
            put(c.encode_utf8(&mut buf).as_bytes());
        }
        if !chunk.invalid().is_empty() {
            put(REPLACEMENT);
        }
    }
    Ok(out)
}

/// Counts words (runs of alphanumeric characters; invalid UTF-8 ends a
/// word, as the U+FFFD of a lossy conversion would) and answers with the
/// number of distinct words and the ten most frequent. The words are
/// counted first and sorted in one buffer of that many slices, charged
/// before it is allocated: a hash table grew by doubling to 50 bytes or
/// more per two-byte word, uncharged.
pub(super) fn word_counts(
    body: &[u8],
    charge: &Charge<'_>,
    held: usize,
) -> Result<Vec<u8>, Refused> {
    let words = || {
        body.utf8_chunks().flat_map(|c| {
            c.valid()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
        })
    };
    let n = words().count();
    let list_bytes = block(n * size_of::<&str>());
    charge.cover(held + list_bytes)?;
    let mut list: Vec<&str> = Vec::with_capacity(n);
    list.extend(words());
    list.sort_unstable();
    let mut distinct = 0;
    let mut top: Vec<(&str, u64)> = Vec::with_capacity(11);
    for run in list.chunk_by(|a, b| a == b) {
        distinct += 1;
        let entry = (run[0], run.len() as u64);
        // Most frequent first, then alphabetical (runs come in order).
        let at = top.partition_point(|t| t.1 >= entry.1);
        if at < 10 {
            top.insert(at, entry);
            top.truncate(10);
        }
    }
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        distinct: usize,
        top: &'a [(&'a str, u64)],
    }
    // The answer's length at most: its frame, and each entry's word,
    // count and punctuation (words need no escapes: alphanumeric only).
    let most = 32 + top.iter().map(|t| t.0.len() + 26).sum::<usize>();
    charge.cover(held + list_bytes + block(most))?;
    let mut out = Vec::with_capacity(most);
    serde_json::to_writer(
        &mut out,
        &Answer {
            distinct,
            top: &top,
        },
    )
    .expect("serializes");
    Ok(out)
}

/// What a request whose body is `body` bytes holds before its handler
/// builds anything: its least charge and its body's buffer.
pub(super) fn held(body: usize) -> usize {
    MIN_CHARGE.saturating_add(block(body))
}

/// What a transform of a `body`-byte body builds besides [`held`], in the
/// common case: `upper` and `reverse` one buffer the body's length (valid
/// UTF-8); `words` a list of one slice (16 bytes) per word, for text of
/// five bytes a word or more (English prose: about six), and its answer.
pub(super) fn transform_builds(body: usize, words: bool) -> usize {
    if words {
        block(body.div_ceil(5).saturating_mul(size_of::<&str>())).saturating_add(block(1 << 10))
    } else {
        block(body)
    }
}

/// What an echo of a `body`-byte JSON document builds besides [`held`],
/// in the common case: its parsed tree, counted as twice the body (an
/// ordinary document; a small one is charged the per-client cost, which
/// covers its tree), and its output as [`to_json`] grows it: doubling
/// from 1 KiB to the body's length, the last two buffers both held while
/// the last is filled.
pub(super) fn echo_builds(body: usize) -> usize {
    let last = body
        .max(1 << 10)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX);
    let output = if last == 1 << 10 {
        block(last)
    } else {
        block(last).saturating_add(block(last / 2))
    };
    block(body).saturating_mul(2).saturating_add(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_the_allocator_s_sizes() {
        // A 64 KiB buffer is a 64 KiB block (it was counted as 80 KiB).
        assert_eq!(block(64 << 10), 64 << 10);
        assert_eq!(block(65_540), 80 << 10);
        assert_eq!(block(0), 0);
        assert_eq!(block(1), 16);
        assert_eq!(block(100), 112);
        // A fine class is counted as the four-way class serving it.
        assert_eq!(block(1100), 1280);
        assert_eq!(block(1280), 1280);
        assert_eq!(block(2100), 2560);
        assert_eq!(block(4096), 4096);
        // Past 128 KiB: whole 64 KiB pages (counted as 4 KiB pages).
        assert_eq!(block((128 << 10) + 1), 192 << 10);
        assert_eq!(block(1_000_000), 1 << 20);
    }

    #[test]
    fn reverse_matches_the_lossy_reversal() {
        let none = Charge::new(None);
        for body in [
            &b"hello"[..],
            "h\u{e9}llo \u{1F600}!".as_bytes(),
            b"ab\xffcd\xe2\x82",
            b"\xff\xfe\xfd",
            b"",
        ] {
            let expected: String = String::from_utf8_lossy(body).chars().rev().collect();
            assert_eq!(reverse(body, &none, 0).unwrap(), expected.into_bytes());
        }
    }

    #[test]
    fn words_are_counted() {
        let none = Charge::new(None);
        let out = word_counts(b"a b a, c a b\xffb", &none, 0).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["distinct"], 3);
        assert_eq!(v["top"][0], serde_json::json!(["a", 3]));
        assert_eq!(v["top"][1], serde_json::json!(["b", 3]));
        assert_eq!(v["top"][2], serde_json::json!(["c", 1]));
    }

    #[test]
    fn the_parse_builds_what_serde_json_builds() {
        let none = Charge::new(None);
        let body = br#"{"a":[1,-2,3.5,"x\ny",null,true,{"b":{}}],"c":"\u00e9","d":[]}"#;
        let Ok(parsed) = parse_json(body, 0, &none) else {
            panic!("parses")
        };
        let expected: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(parsed.value, expected);
        assert!(parsed.bytes > 0);
        assert!(matches!(
            parse_json(b"[1,2", 0, &none),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse_json(b"[1] x", 0, &none),
            Err(ParseError::Invalid(_))
        ));
    }
}
