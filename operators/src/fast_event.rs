//! The fast path of event parsing: a single pass over the bytes of a line in the shape
//! producers write (known fields only, no escapes in strings, plain numbers), with no serde.
//!
//! It answers only when it is sure: [`parse_fast`] returns `Some(event)` exactly when the
//! reference parser (`serde_json` with the rules of [`crate::event`]) would return
//! `Ok(event)`, and `None` for anything else: an escape or control byte in a string, an
//! unknown or repeated field, an exponent, a number out of range, a missing field, any
//! malformed input. The caller then runs the reference parser, which gives the result and,
//! for invalid input, the reason. The property tests in [`crate::event`] check that both
//! agree on valid, mutated and random lines.

use std::cell::RefCell;

use crate::event::{AttrValue, CompactString, Event, Experiment, Field, END_TIMESTAMP_MS, MIN_TIMESTAMP_MS};
use crate::json;
use crate::scratch::with_scratch;

/// A JSON integer as `serde_json` reports it: non-negative as `u64`, negative as `i64`.
#[derive(Clone, Copy)]
enum Int {
    U(u64),
    I(i64),
}

/// A scalar value.
enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(Int),
    Float(f64),
    Str(&'a str),
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace (not consumed).
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.at).copied()
    }

    /// Consumes `c` after whitespace.
    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    /// A string without escapes or control bytes (those make the caller fall back).
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        self.string_rest()
    }

    /// [`Cursor::string`] after its opening quote.
    #[inline]
    fn string_rest(&mut self) -> Option<&'a str> {
        let start = self.at;
        let rest = &self.bytes[start..];
        let len = json::first_special(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        // Both ends are at ASCII quotes, so they are character boundaries.
        self.text.get(start..start + len)
    }

    #[inline]
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        let end = self.at + lit.len();
        (self.bytes.get(self.at..end)? == lit).then(|| self.at = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?` (no exponent). Integers out of range, `-0` and floats
    /// longer than 24 bytes are left to the reference parser.
    fn number(&mut self) -> Option<Scalar<'a>> {
        let start = self.at;
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let digits = self.at;
        let mut value: u64 = 0;
        while let Some(&b) = self.bytes.get(self.at) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.at += 1;
        }
        let n = self.at - digits;
        if n == 0 || (n > 1 && self.bytes[digits] == b'0') {
            return None;
        }
        match self.bytes.get(self.at) {
            Some(b'e' | b'E') => None,
            Some(b'.') => {
                self.at += 1;
                let frac = self.at;
                while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                    self.at += 1;
                }
                if self.at == frac || matches!(self.bytes.get(self.at), Some(b'e' | b'E')) || self.at - start > 24 {
                    return None;
                }
                // Correctly rounded, like serde_json with `float_roundtrip`.
                let v: f64 = self.text.get(start..self.at)?.parse().ok()?;
                v.is_finite().then_some(Scalar::Float(v))
            }
            _ if negative => {
                if value == 0 {
                    return None;
                }
                let v = 0i64.checked_sub_unsigned(value)?;
                Some(Scalar::Int(Int::I(v)))
            }
            _ => Some(Scalar::Int(Int::U(value))),
        }
    }

    /// A scalar; arrays and objects make the caller fall back.
    #[inline]
    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => {
                // Already past any whitespace, at the quote.
                self.at += 1;
                self.string_rest().map(Scalar::Str)
            }
            b'n' => self.literal(b"null").map(|()| Scalar::Null),
            b't' => self.literal(b"true").map(|()| Scalar::Bool(true)),
            b'f' => self.literal(b"false").map(|()| Scalar::Bool(false)),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// After a value: `true` when the enclosing container goes on (`,`), `false` when it
    /// ends (`close`).
    #[inline]
    fn more(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.at += 1;
                Some(true)
            }
            b if b == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// `null` as `Some(None)`, else the container `read` reads as `Some(Some(_))` (`None`:
    /// fall back).
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// An object of scalars, as pairs sorted by key (duplicate keys fall back). `{}` is an
    /// empty list.
    ///
    /// The pairs are collected in `pairs`, a roomy buffer kept from line to line, then moved
    /// (one `memcpy`, `Vec::append`) into a vector of their size: an event waits for its
    /// window with its maps (a minute or more), so their slack would be resident memory.
    /// (A `SmallVec` on the stack cost more: its `into_vec` moves the pairs one by one.)
    fn object<V>(
        &mut self,
        pairs: &mut Vec<(CompactString, V)>,
        value: impl Fn(Scalar<'a>) -> Option<V>,
    ) -> Option<Vec<(CompactString, V)>> {
        self.eat(b'{')?;
        pairs.clear();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(Vec::new());
        }
        // Keys in input order, as the line's text, with their 8-byte prefixes (see
        // `sort_pairs`), and whether they are already in order (by prefix, then whole only
        // when two prefixes are equal).
        let mut keys: [&'a str; SORT_KEYS] = [""; SORT_KEYS];
        let mut prefixes = [0u64; SORT_KEYS];
        let mut sorted = true;
        let mut last: Option<(u64, &'a str)> = None;
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            let v = value(self.scalar()?)?;
            let prefix = key_prefix(key.as_bytes());
            if let Some((lp, lk)) = last {
                sorted &= lp < prefix || (lp == prefix && lk < key);
            }
            last = Some((prefix, key));
            if let (Some(k), Some(p)) = (keys.get_mut(pairs.len()), prefixes.get_mut(pairs.len())) {
                (*k, *p) = (key, prefix);
            }
            pairs.push((key.into(), v));
            if !self.more(b'}')? {
                break;
            }
        }
        if !sorted {
            sort_pairs(pairs, &keys, &prefixes)?;
        }
        let mut exact = Vec::with_capacity(pairs.len());
        exact.append(pairs);
        Some(exact)
    }

    /// `[{"experiment_id":u64,"variation_id":u64}, ...]`, each entry with exactly those two
    /// keys.
    fn experiments(&mut self) -> Option<Vec<Experiment>> {
        self.eat(b'[')?;
        let mut out = Vec::with_capacity(4);
        if self.peek()? == b']' {
            self.at += 1;
            return Some(out);
        }
        loop {
            self.eat(b'{')?;
            let (mut experiment_id, mut variation_id) = (None, None);
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                let slot = match key {
                    "experiment_id" => &mut experiment_id,
                    "variation_id" => &mut variation_id,
                    _ => return None,
                };
                let Scalar::Int(Int::U(v)) = self.scalar()? else {
                    return None;
                };
                if slot.replace(v).is_some() {
                    return None;
                }
                if !self.more(b'}')? {
                    break;
                }
            }
            out.push(Experiment {
                experiment_id: experiment_id?,
                variation_id: variation_id?,
            });
            if !self.more(b']')? {
                break;
            }
        }
        Some(out)
    }
}

/// Maps of up to this many keys are sorted by position (see [`sort_pairs`]).
const SORT_KEYS: usize = 16;

/// Sorts the pairs of an object whose keys came out of order by key; `None` (fall back) on a
/// duplicate key. `keys` holds the first [`SORT_KEYS`] keys in input order, as the line's
/// text, and `prefix` their [`key_prefix`]es.
///
/// Up to [`SORT_KEYS`] pairs, it sorts positions (a byte each) by the borrowed keys, then puts
/// each pair in its place with at most one swap, instead of sorting the pairs themselves:
/// those are 48-56 bytes to move and their keys `CompactString`s to decode at every
/// comparison.
fn sort_pairs<V>(pairs: &mut [(CompactString, V)], keys: &[&str; SORT_KEYS], prefix: &[u64; SORT_KEYS]) -> Option<()> {
    let n = pairs.len();
    if n > SORT_KEYS {
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        return (!pairs.windows(2).any(|w| w[0].0 == w[1].0)).then_some(());
    }
    // The prefixes order like the keys unless equal, so the full keys are compared only then.
    let cmp = |a: u8, b: u8| {
        let (a, b) = (a as usize, b as usize);
        prefix[a].cmp(&prefix[b]).then_with(|| keys[a].cmp(keys[b]))
    };
    let mut order: [u8; SORT_KEYS] = std::array::from_fn(|i| i as u8);
    let order = &mut order[..n];
    // Insertion sort: maps are small.
    for i in 1..n {
        let mut j = i;
        while j > 0 && cmp(order[j - 1], order[j]).is_gt() {
            order.swap(j - 1, j);
            j -= 1;
        }
    }
    if order.windows(2).any(|w| cmp(w[0], w[1]).is_eq()) {
        return None;
    }
    // Put the pairs in that order in place, one swap per pair out of place: `at[k]` is where
    // pair `k` (by input position) is now, `who[p]` which pair is at `p`.
    let mut at: [u8; SORT_KEYS] = std::array::from_fn(|i| i as u8);
    let mut who = at;
    for (t, &k) in order.iter().enumerate() {
        let p = at[k as usize] as usize;
        if p != t {
            pairs.swap(t, p);
            let moved = who[t];
            at[moved as usize] = p as u8;
            who[p] = moved;
            at[k as usize] = t as u8;
            who[t] = k;
        }
    }
    Some(())
}

/// The first 8 bytes of `key` as a big-endian number, zero-padded. Two keys' prefixes order
/// like the keys unless equal (a key of the fast path has no zero byte, so a shorter key that
/// begins a longer one has the smaller prefix).
#[inline]
fn key_prefix(key: &[u8]) -> u64 {
    match key.first_chunk::<8>() {
        Some(word) => u64::from_be_bytes(*word),
        None => key
            .iter()
            .enumerate()
            .fold(0, |p, (i, &b)| p | (u64::from(b) << (56 - 8 * i))),
    }
}

/// A string field of `1..=max` bytes (`null` and other lengths fall back).
#[inline]
fn bounded(s: Scalar<'_>, max: usize) -> Option<CompactString> {
    match s {
        Scalar::Str(s) if !s.is_empty() && s.len() <= max => Some(s.into()),
        _ => None,
    }
}

fn number_of(s: &Scalar<'_>) -> Option<serde_json::Number> {
    match *s {
        Scalar::Int(Int::U(v)) => Some(v.into()),
        Scalar::Int(Int::I(v)) => Some(v.into()),
        Scalar::Float(v) => serde_json::Number::from_f64(v),
        _ => None,
    }
}

/// Parses a line whose length and encoding were checked, when it is in the common shape;
/// `None` leaves it to the reference parser (see the module docs).
pub(crate) fn parse_fast(text: &str) -> Option<Event> {
    with_scratch(&SCRATCH, |(attrs, tags)| parse_with(text, attrs, tags))
}

thread_local! {
    /// The roomy buffers [`Cursor::object`] collects `attributes` and `tags` in: reused from
    /// line to line instead of allocated for each.
    #[allow(clippy::type_complexity)]
    static SCRATCH: RefCell<(Vec<(CompactString, AttrValue)>, Vec<(CompactString, CompactString)>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
}

/// [`parse_fast`] with the scratch buffers of the attribute and tag maps.
fn parse_with(
    text: &str,
    attr_pairs: &mut Vec<(CompactString, AttrValue)>,
    tag_pairs: &mut Vec<(CompactString, CompactString)>,
) -> Option<Event> {
    let mut c = Cursor {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    c.eat(b'{')?;
    let mut seen: u16 = 0;
    let (mut event_id, mut session_id, mut visitor_id, mut project_id) = (None, None, None, None);
    let (mut timestamp, mut kind, mut name, mut revenue, mut value) = (None, None, None, None, None);
    let (mut attributes, mut tags, mut experiments) = (None, None, None);
    loop {
        let key = c.string()?;
        c.eat(b':')?;
        let field = Field::from_bytes(key.as_bytes())?;
        match field {
            Field::EventId => {
                event_id = Some(bounded(c.scalar()?, 128)?);
            }
            Field::SessionId => {
                session_id = match c.scalar()? {
                    Scalar::Null => None,
                    s => Some(bounded(s, 128)?),
                };
            }
            Field::VisitorId => {
                visitor_id = Some(bounded(c.scalar()?, 128)?);
            }
            Field::ProjectId => {
                let Scalar::Int(Int::U(v)) = c.scalar()? else {
                    return None;
                };
                project_id = Some(v);
            }
            Field::Timestamp => {
                let Scalar::Int(Int::U(v)) = c.scalar()? else {
                    return None;
                };
                let v = i64::try_from(v).ok()?;
                timestamp = Some(v).filter(|v| (MIN_TIMESTAMP_MS..END_TIMESTAMP_MS).contains(v));
                timestamp?;
            }
            Field::Type => {
                kind = Some(bounded(c.scalar()?, 64)?);
            }
            Field::Name => {
                name = match c.scalar()? {
                    Scalar::Null => None,
                    Scalar::Str(s) => Some(s.into()),
                    _ => return None,
                };
            }
            Field::Revenue => {
                revenue = match c.scalar()? {
                    Scalar::Null => None,
                    Scalar::Int(Int::I(v)) => Some(v),
                    Scalar::Int(Int::U(v)) => Some(i64::try_from(v).ok()?),
                    _ => return None,
                };
            }
            Field::Value => {
                value = match c.scalar()? {
                    Scalar::Null => None,
                    s => Some(number_of(&s)?),
                };
            }
            Field::Attributes => {
                attributes = c.nullable(|c| {
                    c.object(attr_pairs, |s| match s {
                        Scalar::Null => Some(AttrValue::Null),
                        Scalar::Bool(b) => Some(AttrValue::Bool(b)),
                        Scalar::Str(s) => Some(AttrValue::Str(s.into())),
                        ref n => number_of(n).map(AttrValue::Num),
                    })
                })?;
            }
            Field::Tags => {
                tags = c.nullable(|c| {
                    c.object(tag_pairs, |s| match s {
                        Scalar::Str(s) => Some(s.into()),
                        _ => None,
                    })
                })?;
            }
            Field::Experiments => {
                experiments = c.nullable(Cursor::experiments)?;
            }
        }
        let bit = field as u16;
        if seen & (1 << bit) != 0 {
            return None;
        }
        seen |= 1 << bit;
        if !c.more(b'}')? {
            break;
        }
    }
    c.skip_ws();
    if c.at != c.bytes.len() {
        return None;
    }
    Some(Event {
        event_id: event_id?,
        session_id,
        visitor_id: visitor_id?,
        project_id: project_id?,
        timestamp: timestamp?,
        kind: kind?,
        name,
        revenue,
        value,
        attributes,
        tags,
        experiments,
    })
}
