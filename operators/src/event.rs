//! The input event model and its validation (pure code, no timely).
//!
//! One JSON object per Kafka message or replay line, exactly as `shared/spec/sessions.md`
//! ("Input event") describes. [`parse_event`] turns raw bytes into an [`Event`] or an
//! [`Invalid`] reason that becomes a dead letter; the reason's text always starts with
//! `invalid`.
//!
//! # Rules
//!
//! - A line over [`MAX_LINE_BYTES`] bytes is invalid (exactly that many is fine).
//! - The whole line must be valid UTF-8 (`invalid: not UTF-8 (byte N)`), then one JSON
//!   object with nothing but whitespace around it. A lone surrogate escape such as
//!   `"\ud800"` is invalid JSON.
//! - Unknown fields are ignored, but their content must still be valid JSON with finite
//!   numbers (`1e400` is invalid anywhere in the line), nested at most [`MAX_DEPTH`] levels
//!   deep (the top-level object is level 1).
//! - An optional field that is `null` counts as absent. A required field that is missing or
//!   `null` is reported as `invalid: missing field <name>`.
//! - String lengths are counted in UTF-8 bytes after unescaping.
//! - Integer fields take JSON integers only (`1.0` and `1e3` are floats, hence invalid).
//!   `value` and the numbers in `attributes` keep the integer/float distinction of the input
//!   (through [`serde_json::Number`]); floats keep their `f64` value, not their spelling
//!   (`1.50` and `1.5` are equal, `1e2` is the float `100.0`). An integer beyond 64 bits is a
//!   finite number, read as a float. serde_json reads `-0` as the float `-0.0`, so `-0` is
//!   not accepted where an integer is required.
//! - An `attributes`, `tags` or `experiments` field that is present but empty (`{}`, `[]`)
//!   is kept as `Some` of an empty vector (it was not omitted).
//!
//! # Duplicate keys
//!
//! JSON (RFC 8259) leaves the meaning of an object with a repeated name open, and parsers
//! disagree (first wins, last wins, error). Since an event's identity must not depend on
//! which parser read it, **a key that appears twice in any object of the line is invalid**:
//! at the top level, in `attributes`, in `tags`, in an `experiments` entry, and in objects
//! nested inside ignored unknown fields. Keys are compared after unescaping (`"a"` and
//! `"\u0061"` are the same key), and a repeated key is invalid even when one of the values is
//! `null`. The reason is `invalid: duplicate key "<key>"`.
//!
//! # Speed
//!
//! Parsing is the hot path. [`parse_event`] checks UTF-8 once for the whole line, then
//! drives `serde_json`'s `&str` deserializer (which then skips its per-string checks) with
//! hand-written visitors, with no intermediate `serde_json::Value`: field names are matched
//! on their bytes, strings are borrowed from the input when they contain no escapes and are
//! copied only into the owned fields of the [`Event`], and maps already in key order are not
//! sorted again. [`parse_event_from`] accepts any self-describing serde deserializer, which is
//! how `benches/parse.rs` runs the same validation on `sonic-rs` and `simd-json`: on ~370-byte
//! click-stream lines neither was faster than `serde_json` (sonic-rs about equal to 20%
//! slower, simd-json 20-40% slower, which pays for copying the line and building its tape),
//! so `parse_event` stays on `serde_json`. Most of the remaining time is spent in
//! `serde_json`'s string scanning and in allocating the owned strings.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

/// The string type of event fields: up to 24 bytes are stored inline, so the short ids,
/// attribute keys and values of a typical event cost no allocation. It derefs to `str`.
pub use compact_str::CompactString;

/// Largest accepted line or message, in bytes (64 KiB).
pub const MAX_LINE_BYTES: usize = 65_536;
/// Smallest valid timestamp, ms since the Unix epoch (2000-01-01T00:00:00Z).
pub const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
/// First invalid timestamp, ms since the Unix epoch (2100-01-01T00:00:00Z).
pub const END_TIMESTAMP_MS: i64 = 4_102_444_800_000;
/// Deepest accepted nesting of arrays and objects in a line; the top-level object is level 1.
///
/// Only unknown fields can nest deeply; the limit keeps recursion bounded.
pub const MAX_DEPTH: usize = 64;

/// A value of the `attributes` object: string, number, boolean or null.
///
/// In human-readable formats (JSON) it is the plain JSON value; in binary formats (bincode,
/// which timely uses to exchange data between processes and which cannot read self-describing
/// values) it is a tagged enum with numbers kept as their JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrValue {
    /// A JSON string.
    Str(CompactString),
    /// A finite JSON number, kept as written (integer or float).
    Num(serde_json::Number),
    /// A JSON boolean.
    Bool(bool),
    /// JSON `null` (kept: a key whose value is null is still a key).
    Null,
}

/// The binary-format form of [`AttrValue`].
#[derive(Serialize, Deserialize)]
enum AttrRepr<'a> {
    Str(std::borrow::Cow<'a, str>),
    Num(std::borrow::Cow<'a, str>),
    Bool(bool),
    Null,
}

/// The JSON form of [`AttrValue`].
#[derive(Deserialize)]
#[serde(untagged)]
enum AttrJson {
    Str(String),
    Num(serde_json::Number),
    Bool(bool),
    Null,
}

impl Serialize for AttrValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return match self {
                AttrValue::Str(s) => serializer.serialize_str(s),
                AttrValue::Num(n) => n.serialize(serializer),
                AttrValue::Bool(b) => serializer.serialize_bool(*b),
                AttrValue::Null => serializer.serialize_unit(),
            };
        }
        match self {
            AttrValue::Str(s) => AttrRepr::Str(s.as_str().into()),
            AttrValue::Num(n) => AttrRepr::Num(n.to_string().into()),
            AttrValue::Bool(b) => AttrRepr::Bool(*b),
            AttrValue::Null => AttrRepr::Null,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            return Ok(match AttrJson::deserialize(deserializer)? {
                AttrJson::Str(s) => AttrValue::Str(s.into()),
                AttrJson::Num(n) => AttrValue::Num(n),
                AttrJson::Bool(b) => AttrValue::Bool(b),
                AttrJson::Null => AttrValue::Null,
            });
        }
        Ok(match AttrRepr::deserialize(deserializer)? {
            AttrRepr::Str(s) => AttrValue::Str(s.into()),
            AttrRepr::Num(n) => AttrValue::Num(n.parse().map_err(serde::de::Error::custom)?),
            AttrRepr::Bool(b) => AttrValue::Bool(b),
            AttrRepr::Null => AttrValue::Null,
        })
    }
}

/// `Option<serde_json::Number>` as itself in JSON and as its text in binary formats.
mod number_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(n: &Option<serde_json::Number>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            n.serialize(s)
        } else {
            n.as_ref().map(|n| n.to_string()).serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Number>, D::Error> {
        if d.is_human_readable() {
            Option::<serde_json::Number>::deserialize(d)
        } else {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
            }
        }
    }
}

/// One experiment layer state of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Experiment {
    /// Experiment id.
    pub experiment_id: u64,
    /// Variation id within the experiment.
    pub variation_id: u64,
}

/// A validated click-stream event.
///
/// Optional fields are `None` when the input omitted them or gave `null`.
/// Maps are kept as vectors sorted by key (unique keys), which is compact and gives a
/// deterministic output order.
///
/// The derived `Serialize`/`Deserialize` are a plain (internal) encoding of the struct; the
/// input JSON form is read by [`parse_event`] and written by [`Event::input_json`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Identity of the event (1..=128 bytes).
    pub event_id: CompactString,
    /// Client-assigned session id (1..=128 bytes); `None` makes a gap-based session.
    pub session_id: Option<CompactString>,
    /// Visitor id (1..=128 bytes).
    pub visitor_id: CompactString,
    /// Project id.
    pub project_id: u64,
    /// Event time, ms since the Unix epoch, in `[MIN_TIMESTAMP_MS, END_TIMESTAMP_MS)`.
    pub timestamp: i64,
    /// The `type` field (1..=64 bytes): `pageview`, `click`, ...
    pub kind: CompactString,
    /// Optional name, e.g. `add_to_cart`.
    pub name: Option<CompactString>,
    /// Optional revenue in minor units.
    pub revenue: Option<i64>,
    /// Optional finite number, kept as written.
    #[serde(with = "number_text")]
    pub value: Option<serde_json::Number>,
    /// Optional common metadata, sorted by key.
    pub attributes: Option<Vec<(CompactString, AttrValue)>>,
    /// Optional event-specific tags, sorted by key.
    pub tags: Option<Vec<(CompactString, CompactString)>>,
    /// Optional experiment layer states, in input order.
    pub experiments: Option<Vec<Experiment>>,
}

#[cfg(test)]
impl Event {
    /// A `pageview` with the required fields only (tests).
    pub(crate) fn minimal(
        event_id: &str,
        session_id: Option<&str>,
        visitor_id: &str,
        project_id: u64,
        timestamp: i64,
    ) -> Event {
        Event {
            event_id: event_id.into(),
            session_id: session_id.map(Into::into),
            visitor_id: visitor_id.into(),
            project_id,
            timestamp,
            kind: "pageview".into(),
            name: None,
            revenue: None,
            value: None,
            attributes: None,
            tags: None,
            experiments: None,
        }
    }
}

/// Why a line is not a valid event. `Display` gives the dead-letter reason, which always
/// starts with `invalid`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("invalid: line over {MAX_LINE_BYTES} bytes")]
    TooLong,
    /// The line is not valid UTF-8; `at` is the offset of the first bad byte.
    #[error("invalid: not UTF-8 (byte {at})")]
    NotUtf8 {
        /// Offset of the first byte that is not part of a valid UTF-8 sequence.
        at: usize,
    },
    /// The line is well-formed JSON but not an object.
    #[error("invalid: not a JSON object")]
    NotObject,
    /// The line is not well-formed JSON (syntax, UTF-8, number out of range, trailing
    /// characters...); the text is the parser's message.
    #[error("invalid: json: {0}")]
    Json(String),
    /// A number is not finite (for parsers that produce infinities instead of failing).
    #[error("invalid: number out of range")]
    NotFinite,
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    #[error("invalid: nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A required field is missing or `null`.
    #[error("invalid: missing field {0}")]
    MissingField(&'static str),
    /// A key appears twice in one object.
    #[error("invalid: duplicate key {0:?}")]
    DuplicateKey(String),
    /// A field has the wrong type or length; reads `invalid: <field> must be <what>`.
    #[error("invalid: {field} must be {expected}")]
    Field {
        /// The field (or part of it, e.g. `attributes values`).
        field: &'static str,
        /// What it must be, e.g. `1..=128 bytes`.
        expected: &'static str,
    },
    /// `timestamp` is an integer outside `[MIN_TIMESTAMP_MS, END_TIMESTAMP_MS)`.
    #[error("invalid: timestamp out of range")]
    TimestampOutOfRange,
}

/// Parses and validates one input line (or Kafka message payload) with `serde_json`.
///
/// Never panics; every failure is an [`Invalid`] whose text starts with `invalid`.
pub fn parse_event(line: &[u8]) -> Result<Event, Invalid> {
    checked(line, parse_text)
}

/// [`parse_event`] without its fast path: `serde_json` and the rules alone, with the same
/// checks in the same order. It gives the same result on every line (the property tests check
/// it); benchmarks and comparisons use it.
pub fn parse_event_reference(line: &[u8]) -> Result<Event, Invalid> {
    checked(line, parse_reference)
}

/// The length, then the encoding, then `parse` of the text.
fn checked(line: &[u8], parse: fn(&str) -> Result<Event, Invalid>) -> Result<Event, Invalid> {
    fits(line)?;
    // Validating the whole line at once is faster than letting serde_json check every
    // string on its own, and `from_str` then skips those checks.
    let text = std::str::from_utf8(line).map_err(|e| Invalid::NotUtf8 { at: e.valid_up_to() })?;
    parse(text)
}

/// [`parse_event`] of a line the caller keeps: the line as text (bytes that are not UTF-8
/// replaced by U+FFFD, as a dead letter shows them) and the same result as
/// `parse_event(&line)`, checking the encoding once for both.
pub fn parse_event_owned(line: Vec<u8>) -> (String, Result<Event, Invalid>) {
    let fits = fits(&line);
    match String::from_utf8(line) {
        Ok(text) => {
            let event = fits.and_then(|()| parse_text(&text));
            (text, event)
        }
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            (text, fits.and(Err(Invalid::NotUtf8 { at })))
        }
    }
}

/// The length check, which comes before every other (an over-long line is rejected for its
/// length whatever its bytes).
fn fits(line: &[u8]) -> Result<(), Invalid> {
    if line.len() > MAX_LINE_BYTES {
        Err(Invalid::TooLong)
    } else {
        Ok(())
    }
}

/// Parses and validates a line whose length and encoding were checked: the fast path when
/// the line is in the common shape, else the reference parser.
fn parse_text(text: &str) -> Result<Event, Invalid> {
    match crate::fast_event::parse_fast(text) {
        Some(event) => Ok(event),
        None => parse_reference(text),
    }
}

/// The reference parser (`serde_json` and the rules above) of a line whose length and
/// encoding were checked; the fast path agrees with it wherever it answers.
fn parse_reference(text: &str) -> Result<Event, Invalid> {
    let mut de = serde_json::Deserializer::from_str(text);
    let event = parse_event_from(&mut de)?;
    de.end().map_err(|e| Invalid::Json(e.to_string()))?;
    Ok(event)
}

/// Validates one event read from any self-describing serde deserializer positioned on the
/// top-level value.
///
/// The caller checks the line length beforehand ([`MAX_LINE_BYTES`]), UTF-8 unless the
/// deserializer does, and that nothing follows the value afterwards (e.g.
/// `serde_json::Deserializer::end`). Errors of the deserializer itself become
/// [`Invalid::Json`]; breaches of the rules get their own [`Invalid`] reason.
pub fn parse_event_from<'de, D>(deserializer: D) -> Result<Event, Invalid>
where
    D: Deserializer<'de>,
{
    let mut slot = None;
    match (EventSeed { slot: &mut slot }).deserialize(deserializer) {
        Ok(event) => Ok(event),
        Err(e) => Err(slot.unwrap_or_else(|| Invalid::Json(e.to_string()))),
    }
}

impl Event {
    /// The event in its input JSON form (`type` for [`Event::kind`], objects for the maps,
    /// absent optional fields omitted): `serde_json::to_string(&event.input_json())` gives a
    /// line that [`parse_event`] reads back as an equal event.
    pub fn input_json(&self) -> InputJson<'_> {
        InputJson(self)
    }
}

/// Serializes an [`Event`] in its input JSON form; see [`Event::input_json`].
#[derive(Clone, Copy, Debug)]
pub struct InputJson<'a>(pub &'a Event);

impl Serialize for InputJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("event_id", &e.event_id)?;
        if let Some(s) = &e.session_id {
            map.serialize_entry("session_id", s)?;
        }
        map.serialize_entry("visitor_id", &e.visitor_id)?;
        map.serialize_entry("project_id", &e.project_id)?;
        map.serialize_entry("timestamp", &e.timestamp)?;
        map.serialize_entry("type", &e.kind)?;
        if let Some(n) = &e.name {
            map.serialize_entry("name", n)?;
        }
        if let Some(r) = &e.revenue {
            map.serialize_entry("revenue", r)?;
        }
        if let Some(v) = &e.value {
            map.serialize_entry("value", v)?;
        }
        if let Some(a) = &e.attributes {
            map.serialize_entry("attributes", &PairsAsMap(a))?;
        }
        if let Some(t) = &e.tags {
            map.serialize_entry("tags", &PairsAsMap(t))?;
        }
        if let Some(x) = &e.experiments {
            map.serialize_entry("experiments", &ExperimentsJson(x))?;
        }
        map.end()
    }
}

/// A sorted `Vec<(CompactString, V)>` serialized as a JSON object.
struct PairsAsMap<'a, V>(&'a [(CompactString, V)]);

impl<V: Serialize> Serialize for PairsAsMap<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Experiments serialized as an array of `{"experiment_id", "variation_id"}` objects.
struct ExperimentsJson<'a>(&'a [Experiment]);

impl Serialize for ExperimentsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for x in self.0 {
            seq.serialize_element(x)?;
        }
        seq.end()
    }
}

// ---------------------------------------------------------------------------------------
// Deserialization machinery.
//
// Every visitor shares `slot`: when the input is well-formed JSON but breaks a rule, the
// visitor stores the precise reason there and returns an opaque error to unwind the
// deserializer; `parse_event_from` prefers the slot's reason over the deserializer's message.
// ---------------------------------------------------------------------------------------

type Slot = Option<Invalid>;

/// Records `reason` and returns an error that aborts deserialization.
#[cold]
fn fail<E: de::Error>(slot: &mut Slot, reason: Invalid) -> E {
    *slot = Some(reason);
    E::custom("invalid event")
}

const fn field(field: &'static str, expected: &'static str) -> Invalid {
    Invalid::Field { field, expected }
}

/// The top-level fields, numbered for the "seen" bit mask (of both parsers).
#[derive(Clone, Copy)]
pub(crate) enum Field {
    EventId = 0,
    SessionId,
    VisitorId,
    ProjectId,
    Timestamp,
    Type,
    Name,
    Revenue,
    Value,
    Attributes,
    Tags,
    Experiments,
}

impl Field {
    /// The field named `b`, if it is one: told apart by its first and last bytes (distinct for
    /// the twelve names), then checked whole against that one name (a constant, so the check
    /// is a few word compares), instead of against each name in turn. Always inlined: called
    /// once per field of every line, it costs a call more than its work when it is not.
    #[inline(always)]
    pub(crate) fn from_bytes(b: &[u8]) -> Option<Field> {
        Some(match (*b.first()?, *b.last()?) {
            (b'e', b'd') if b == b"event_id" => Field::EventId,
            (b's', b'd') if b == b"session_id" => Field::SessionId,
            (b'v', b'd') if b == b"visitor_id" => Field::VisitorId,
            (b'p', b'd') if b == b"project_id" => Field::ProjectId,
            (b't', b'p') if b == b"timestamp" => Field::Timestamp,
            (b't', b'e') if b == b"type" => Field::Type,
            (b'n', b'e') if b == b"name" => Field::Name,
            (b'r', b'e') if b == b"revenue" => Field::Revenue,
            (b'v', b'e') if b == b"value" => Field::Value,
            (b'a', b's') if b == b"attributes" => Field::Attributes,
            (b't', b's') if b == b"tags" => Field::Tags,
            (b'e', b's') if b == b"experiments" => Field::Experiments,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Field::EventId => "event_id",
            Field::SessionId => "session_id",
            Field::VisitorId => "visitor_id",
            Field::ProjectId => "project_id",
            Field::Timestamp => "timestamp",
            Field::Type => "type",
            Field::Name => "name",
            Field::Revenue => "revenue",
            Field::Value => "value",
            Field::Attributes => "attributes",
            Field::Tags => "tags",
            Field::Experiments => "experiments",
        }
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    #[inline]
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    #[inline]
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    #[inline]
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Fails on the first key that appears twice in `keys` (sorts `keys`).
fn check_unique_keys<E: de::Error>(slot: &mut Slot, keys: &mut [Cow<'_, str>]) -> Result<(), E> {
    if keys.len() < 2 {
        return Ok(());
    }
    keys.sort_unstable();
    match keys.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(fail(slot, Invalid::DuplicateKey(w[0].to_string()))),
        None => Ok(()),
    }
}

/// Key-value pairs collected in input order and returned sorted by key with unique keys.
///
/// Input that is already sorted (the common case: most producers write keys in a fixed
/// order) costs one comparison per key; otherwise the pairs are sorted once at the end.
struct SortedPairs<V> {
    pairs: Vec<(CompactString, V)>,
    sorted: bool,
}

impl<V> SortedPairs<V> {
    fn with_capacity(n: usize) -> Self {
        SortedPairs {
            pairs: Vec::with_capacity(n),
            sorted: true,
        }
    }

    #[inline]
    fn push<E: de::Error>(&mut self, slot: &mut Slot, key: Cow<'_, str>, v: V) -> Result<(), E> {
        if self.sorted {
            if let Some((last, _)) = self.pairs.last() {
                match last.as_str().cmp(&key) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        return Err(fail(slot, Invalid::DuplicateKey(key.into_owned())));
                    }
                    std::cmp::Ordering::Greater => self.sorted = false,
                }
            }
        }
        self.pairs.push((key.into(), v));
        Ok(())
    }

    fn finish<E: de::Error>(mut self, slot: &mut Slot) -> Result<Vec<(CompactString, V)>, E> {
        if !self.sorted {
            self.pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            if let Some(w) = self.pairs.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(fail(slot, Invalid::DuplicateKey(w[0].0.to_string())));
            }
        }
        Ok(self.pairs)
    }
}

/// A JSON scalar; arrays and objects are rejected while reading with the `what` reason.
enum Scalar<'de> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'de, str>),
}

/// Reads one scalar; a compound value fails with `what`.
struct ScalarSeed<'s> {
    slot: &'s mut Slot,
    what: Invalid,
}

impl<'de> DeserializeSeed<'de> for ScalarSeed<'_> {
    type Value = Scalar<'de>;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed<'_> {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON scalar")
    }

    #[inline]
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }

    #[inline]
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(if v >= 0 { Scalar::U64(v as u64) } else { Scalar::I64(v) })
    }

    #[inline]
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }

    #[inline]
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v.is_finite() {
            Ok(Scalar::F64(v))
        } else {
            Err(fail(self.slot, Invalid::NotFinite))
        }
    }

    #[inline]
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }

    #[inline]
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    #[inline]
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
        Err(fail(self.slot, self.what))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
        Err(fail(self.slot, self.what))
    }
}

/// Reads and discards any value, still checking finiteness, depth and duplicate keys.
/// `depth` is the number of containers enclosing the value.
struct IgnoreSeed<'s> {
    slot: &'s mut Slot,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for IgnoreSeed<'_> {
    type Value = ();

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IgnoreSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(fail(self.slot, Invalid::NotFinite))
        }
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(fail(self.slot, Invalid::TooDeep));
        }
        while seq
            .next_element_seed(IgnoreSeed {
                slot: &mut *self.slot,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(fail(self.slot, Invalid::TooDeep));
        }
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            keys.push(k);
            map.next_value_seed(IgnoreSeed {
                slot: &mut *self.slot,
                depth,
            })?;
        }
        check_unique_keys(self.slot, &mut keys)
    }
}

/// The top-level object.
struct EventSeed<'s> {
    slot: &'s mut Slot,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Event;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
        d.deserialize_any(self)
    }
}

/// Reads a scalar from `map`'s next value, failing with `what` on arrays and objects.
#[inline]
fn next_scalar<'de, A: MapAccess<'de>>(map: &mut A, slot: &mut Slot, what: Invalid) -> Result<Scalar<'de>, A::Error> {
    map.next_value_seed(ScalarSeed { slot, what })
}

/// A string of `min..=max` bytes; `Ok(None)` for null.
#[inline]
fn string_value<E: de::Error>(
    s: Scalar<'_>,
    slot: &mut Slot,
    name: &'static str,
    max: usize,
    len_reason: &'static str,
) -> Result<Option<CompactString>, E> {
    match s {
        Scalar::Null => Ok(None),
        Scalar::Str(s) if !s.is_empty() && s.len() <= max => Ok(Some(s.into())),
        Scalar::Str(_) => Err(fail(slot, field(name, len_reason))),
        _ => Err(fail(slot, field(name, "a string"))),
    }
}

/// A `u64`; `Ok(None)` for null.
#[inline]
fn u64_value<E: de::Error>(s: Scalar<'_>, slot: &mut Slot, name: &'static str) -> Result<Option<u64>, E> {
    match s {
        Scalar::Null => Ok(None),
        Scalar::U64(v) => Ok(Some(v)),
        _ => Err(fail(slot, field(name, "an unsigned 64-bit integer"))),
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Event, E> {
        Err(fail(self.slot, Invalid::NotObject))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Event, E> {
        Err(fail(self.slot, Invalid::NotObject))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Event, E> {
        Err(fail(self.slot, Invalid::NotObject))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Event, E> {
        Err(fail(self.slot, Invalid::NotObject))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Event, E> {
        Err(fail(self.slot, Invalid::NotObject))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Event, E> {
        Err(fail(self.slot, Invalid::NotObject))
    }

    fn visit_none<E: de::Error>(self) -> Result<Event, E> {
        Err(fail(self.slot, Invalid::NotObject))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Event, A::Error> {
        Err(fail(self.slot, Invalid::NotObject))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let slot = self.slot;
        let mut seen: u16 = 0;
        let mut unknown: Vec<Cow<'de, str>> = Vec::new();

        let mut event_id = None;
        let mut session_id = None;
        let mut visitor_id = None;
        let mut project_id = None;
        let mut timestamp = None;
        let mut kind = None;
        let mut name = None;
        let mut revenue = None;
        let mut value = None;
        let mut attributes = None;
        let mut tags = None;
        let mut experiments = None;

        while let Some(key) = map.next_key_seed(KeySeed)? {
            let Some(f) = Field::from_bytes(key.as_bytes()) else {
                unknown.push(key);
                map.next_value_seed(IgnoreSeed {
                    slot: &mut *slot,
                    depth: 1,
                })?;
                continue;
            };
            let bit = 1u16 << (f as u16);
            if seen & bit != 0 {
                return Err(fail(slot, Invalid::DuplicateKey(f.name().to_owned())));
            }
            seen |= bit;
            match f {
                Field::EventId => {
                    let s = next_scalar(&mut map, slot, field("event_id", "a string"))?;
                    event_id = string_value(s, slot, "event_id", 128, "1..=128 bytes")?;
                }
                Field::SessionId => {
                    let s = next_scalar(&mut map, slot, field("session_id", "a string"))?;
                    session_id = string_value(s, slot, "session_id", 128, "1..=128 bytes")?;
                }
                Field::VisitorId => {
                    let s = next_scalar(&mut map, slot, field("visitor_id", "a string"))?;
                    visitor_id = string_value(s, slot, "visitor_id", 128, "1..=128 bytes")?;
                }
                Field::Type => {
                    let s = next_scalar(&mut map, slot, field("type", "a string"))?;
                    kind = string_value(s, slot, "type", 64, "1..=64 bytes")?;
                }
                Field::Name => {
                    name = match next_scalar(&mut map, slot, field("name", "a string"))? {
                        Scalar::Null => None,
                        Scalar::Str(s) => Some(s.into()),
                        _ => return Err(fail(slot, field("name", "a string"))),
                    };
                }
                Field::ProjectId => {
                    let what = field("project_id", "an unsigned 64-bit integer");
                    let s = next_scalar(&mut map, slot, what)?;
                    project_id = u64_value(s, slot, "project_id")?;
                }
                Field::Timestamp => {
                    let what = field("timestamp", "an integer");
                    timestamp = match next_scalar(&mut map, slot, what)? {
                        Scalar::Null => None,
                        Scalar::U64(v) => match i64::try_from(v) {
                            Ok(v) if (MIN_TIMESTAMP_MS..END_TIMESTAMP_MS).contains(&v) => Some(v),
                            _ => return Err(fail(slot, Invalid::TimestampOutOfRange)),
                        },
                        Scalar::I64(_) => return Err(fail(slot, Invalid::TimestampOutOfRange)),
                        _ => return Err(fail(slot, field("timestamp", "an integer"))),
                    };
                }
                Field::Revenue => {
                    let what = field("revenue", "a signed 64-bit integer");
                    revenue = match next_scalar(&mut map, slot, what.clone())? {
                        Scalar::Null => None,
                        Scalar::I64(v) => Some(v),
                        Scalar::U64(v) => match i64::try_from(v) {
                            Ok(v) => Some(v),
                            Err(_) => return Err(fail(slot, what)),
                        },
                        _ => return Err(fail(slot, what)),
                    };
                }
                Field::Value => {
                    let what = field("value", "a number");
                    value = match next_scalar(&mut map, slot, what.clone())? {
                        Scalar::Null => None,
                        Scalar::U64(v) => Some(serde_json::Number::from(v)),
                        Scalar::I64(v) => Some(serde_json::Number::from(v)),
                        Scalar::F64(v) => match serde_json::Number::from_f64(v) {
                            Some(n) => Some(n),
                            None => return Err(fail(slot, Invalid::NotFinite)),
                        },
                        _ => return Err(fail(slot, what)),
                    };
                }
                Field::Attributes => {
                    attributes = map.next_value_seed(ObjectSeed::<Attributes>::new(&mut *slot))?;
                }
                Field::Tags => {
                    tags = map.next_value_seed(ObjectSeed::<Tags>::new(&mut *slot))?;
                }
                Field::Experiments => {
                    experiments = map.next_value_seed(ExperimentsSeed { slot: &mut *slot })?;
                }
            }
        }
        check_unique_keys(slot, &mut unknown)?;

        let Some(event_id) = event_id else {
            return Err(fail(slot, Invalid::MissingField("event_id")));
        };
        let Some(visitor_id) = visitor_id else {
            return Err(fail(slot, Invalid::MissingField("visitor_id")));
        };
        let Some(project_id) = project_id else {
            return Err(fail(slot, Invalid::MissingField("project_id")));
        };
        let Some(timestamp) = timestamp else {
            return Err(fail(slot, Invalid::MissingField("timestamp")));
        };
        let Some(kind) = kind else {
            return Err(fail(slot, Invalid::MissingField("type")));
        };
        Ok(Event {
            event_id,
            session_id,
            visitor_id,
            project_id,
            timestamp,
            kind,
            name,
            revenue,
            value,
            attributes,
            tags,
            experiments,
        })
    }
}

/// Implements the non-object, non-null cases of an optional-object visitor as failures.
macro_rules! reject_non_container {
    ($what:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(fail(self.slot, $what))
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(fail(self.slot, $what))
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(fail(self.slot, $what))
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(fail(self.slot, $what))
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(fail(self.slot, $what))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    };
}

const EXPERIMENTS_ARRAY: Invalid = field("experiments", "an array");
const EXPERIMENTS_ENTRIES: Invalid = field("experiments entries", "objects");

/// An optional object of scalars (`attributes`, `tags`): what differs between them.
trait ScalarObject {
    /// The type of one value.
    type Value;
    /// The reason when the field is not an object (nor null).
    const OBJECT: Invalid;
    /// The reason when a value is an array or an object (or, for some, another scalar).
    const VALUES: Invalid;
    /// What the visitor expects, for the deserializer's own messages.
    const EXPECTING: &'static str;
    /// Initial capacity of the pairs.
    const CAPACITY: usize;

    /// Converts one value, or fails with its reason.
    fn value<E: de::Error>(s: Scalar<'_>, slot: &mut Slot) -> Result<Self::Value, E>;
}

/// `attributes`: null or an object of scalars.
struct Attributes;

impl ScalarObject for Attributes {
    type Value = AttrValue;
    const OBJECT: Invalid = field("attributes", "an object");
    const VALUES: Invalid = field("attributes values", "strings, numbers, booleans or null");
    const EXPECTING: &'static str = "an attributes object";
    const CAPACITY: usize = 8;

    #[inline]
    fn value<E: de::Error>(s: Scalar<'_>, slot: &mut Slot) -> Result<AttrValue, E> {
        Ok(match s {
            Scalar::Null => AttrValue::Null,
            Scalar::Bool(b) => AttrValue::Bool(b),
            Scalar::U64(v) => AttrValue::Num(v.into()),
            Scalar::I64(v) => AttrValue::Num(v.into()),
            Scalar::F64(v) => match serde_json::Number::from_f64(v) {
                Some(n) => AttrValue::Num(n),
                None => return Err(fail(slot, Invalid::NotFinite)),
            },
            Scalar::Str(s) => AttrValue::Str(s.into()),
        })
    }
}

/// `tags`: null or an object of strings.
struct Tags;

impl ScalarObject for Tags {
    type Value = CompactString;
    const OBJECT: Invalid = field("tags", "an object");
    const VALUES: Invalid = field("tags values", "strings");
    const EXPECTING: &'static str = "a tags object";
    const CAPACITY: usize = 4;

    #[inline]
    fn value<E: de::Error>(s: Scalar<'_>, slot: &mut Slot) -> Result<CompactString, E> {
        match s {
            Scalar::Str(s) => Ok(s.into()),
            _ => Err(fail(slot, Self::VALUES)),
        }
    }
}

/// Reads an optional `K` object into pairs sorted by key with unique keys.
struct ObjectSeed<'s, K> {
    slot: &'s mut Slot,
    kind: PhantomData<K>,
}

impl<'s, K> ObjectSeed<'s, K> {
    fn new(slot: &'s mut Slot) -> Self {
        ObjectSeed {
            slot,
            kind: PhantomData,
        }
    }
}

impl<'de, K: ScalarObject> DeserializeSeed<'de> for ObjectSeed<'_, K> {
    type Value = Option<Vec<(CompactString, K::Value)>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, K: ScalarObject> Visitor<'de> for ObjectSeed<'_, K> {
    type Value = Option<Vec<(CompactString, K::Value)>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(K::EXPECTING)
    }

    reject_non_container!(K::OBJECT);

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
        Err(fail(self.slot, K::OBJECT))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let slot = self.slot;
        let mut out = SortedPairs::with_capacity(K::CAPACITY);
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let v = K::value(next_scalar(&mut map, slot, K::VALUES)?, slot)?;
            out.push(slot, k, v)?;
        }
        out.finish(slot).map(Some)
    }
}

/// `experiments`: null or an array of experiment objects.
struct ExperimentsSeed<'s> {
    slot: &'s mut Slot,
}

impl<'de> DeserializeSeed<'de> for ExperimentsSeed<'_> {
    type Value = Option<Vec<Experiment>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ExperimentsSeed<'_> {
    type Value = Option<Vec<Experiment>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an experiments array")
    }

    reject_non_container!(EXPERIMENTS_ARRAY);

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
        Err(fail(self.slot, EXPERIMENTS_ARRAY))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let slot = self.slot;
        let mut out = Vec::with_capacity(4);
        while let Some(x) = seq.next_element_seed(ExperimentSeed { slot: &mut *slot })? {
            out.push(x);
        }
        Ok(Some(out))
    }
}

/// One `experiments` entry.
struct ExperimentSeed<'s> {
    slot: &'s mut Slot,
}

impl<'de> DeserializeSeed<'de> for ExperimentSeed<'_> {
    type Value = Experiment;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Experiment, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ExperimentSeed<'_> {
    type Value = Experiment;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an experiment object")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Experiment, E> {
        Err(fail(self.slot, EXPERIMENTS_ENTRIES))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Experiment, E> {
        Err(fail(self.slot, EXPERIMENTS_ENTRIES))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Experiment, E> {
        Err(fail(self.slot, EXPERIMENTS_ENTRIES))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Experiment, E> {
        Err(fail(self.slot, EXPERIMENTS_ENTRIES))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Experiment, E> {
        Err(fail(self.slot, EXPERIMENTS_ENTRIES))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Experiment, E> {
        Err(fail(self.slot, EXPERIMENTS_ENTRIES))
    }

    fn visit_none<E: de::Error>(self) -> Result<Experiment, E> {
        Err(fail(self.slot, EXPERIMENTS_ENTRIES))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Experiment, A::Error> {
        Err(fail(self.slot, EXPERIMENTS_ENTRIES))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Experiment, A::Error> {
        let slot = self.slot;
        let mut experiment_id = None;
        let mut variation_id = None;
        let mut seen_exp = false;
        let mut seen_var = false;
        let mut unknown: Vec<Cow<'de, str>> = Vec::new();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let (seen, target, name) = match k.as_bytes() {
                b"experiment_id" => (&mut seen_exp, &mut experiment_id, "experiment_id"),
                b"variation_id" => (&mut seen_var, &mut variation_id, "variation_id"),
                _ => {
                    unknown.push(k);
                    // Enclosing containers: the event, `experiments`, this entry.
                    map.next_value_seed(IgnoreSeed {
                        slot: &mut *slot,
                        depth: 3,
                    })?;
                    continue;
                }
            };
            if *seen {
                return Err(fail(slot, Invalid::DuplicateKey(name.to_owned())));
            }
            *seen = true;
            let what = field(name, "an unsigned 64-bit integer");
            let s = next_scalar(&mut map, slot, what)?;
            *target = u64_value(s, slot, name)?;
        }
        check_unique_keys(slot, &mut unknown)?;
        let Some(experiment_id) = experiment_id else {
            return Err(fail(slot, Invalid::MissingField("experiment_id")));
        };
        let Some(variation_id) = variation_id else {
            return Err(fail(slot, Invalid::MissingField("variation_id")));
        };
        Ok(Experiment {
            experiment_id,
            variation_id,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The required fields, to splice into test lines.
    const BASE: &str = r#""event_id":"e1","visitor_id":"v1","project_id":7,"timestamp":1700000000000,"type":"click""#;

    /// A line with the required fields and `extra` (which starts with a comma) appended.
    fn with(extra: &str) -> String {
        format!("{{{BASE}{extra}}}")
    }

    /// A line where `from` in the required fields is replaced by `to`.
    fn replaced(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from}");
        format!("{{{}}}", BASE.replacen(from, to, 1))
    }

    fn ok(line: &str) -> Event {
        match parse_event(line.as_bytes()) {
            Ok(e) => e,
            Err(e) => panic!("{line}: {e}"),
        }
    }

    fn reason(line: impl AsRef<[u8]>) -> String {
        match parse_event(line.as_ref()) {
            Ok(e) => panic!("accepted {}: {e:?}", String::from_utf8_lossy(line.as_ref())),
            Err(e) => e.to_string(),
        }
    }

    #[track_caller]
    fn assert_invalid(line: impl AsRef<[u8]>, prefix: &str) {
        let r = reason(line.as_ref());
        assert!(
            r.starts_with(prefix),
            "{}: reason {r:?} does not start with {prefix:?}",
            String::from_utf8_lossy(line.as_ref())
        );
        assert!(r.starts_with("invalid"));
    }

    fn sonic(line: &[u8]) -> Result<Event, Invalid> {
        if line.len() > MAX_LINE_BYTES {
            return Err(Invalid::TooLong);
        }
        let mut de = sonic_rs::Deserializer::from_slice(line);
        let event = parse_event_from(&mut de)?;
        de.end().map_err(|e| Invalid::Json(e.to_string()))?;
        Ok(event)
    }

    fn simd(line: &[u8]) -> Result<Event, Invalid> {
        if line.len() > MAX_LINE_BYTES {
            return Err(Invalid::TooLong);
        }
        let mut buf = line.to_vec();
        let mut de = simd_json::Deserializer::from_slice(&mut buf).map_err(|e| Invalid::Json(e.to_string()))?;
        parse_event_from(&mut de)
    }

    /// Every field is found by its name, as itself; a key that shares a name's first and last
    /// bytes (or its length) but is another word is not.
    #[test]
    fn field_names_are_told_apart_by_their_ends_and_checked_whole() {
        use Field::*;
        let all = [
            EventId,
            SessionId,
            VisitorId,
            ProjectId,
            Timestamp,
            Type,
            Name,
            Revenue,
            Value,
            Attributes,
            Tags,
            Experiments,
        ];
        for (i, f) in all.into_iter().enumerate() {
            let name = f.name();
            assert_eq!(
                Field::from_bytes(name.as_bytes()).map(|f| f as usize),
                Some(i),
                "{name}"
            );
            let near = format!("{}x{}", &name[..1], &name[1..]);
            assert!(Field::from_bytes(near.as_bytes()).is_none(), "{near}");
        }
        for key in ["", "e", "ed", "eventid", "event_ie", "Event_id", "types", "tag", "nam"] {
            assert!(Field::from_bytes(key.as_bytes()).is_none(), "{key}");
        }
    }

    // ----- valid events -----------------------------------------------------------------

    #[test]
    fn minimal_event() {
        let e = ok(&with(""));
        assert_eq!(
            e,
            Event {
                event_id: "e1".into(),
                session_id: None,
                visitor_id: "v1".into(),
                project_id: 7,
                timestamp: 1_700_000_000_000,
                kind: "click".into(),
                name: None,
                revenue: None,
                value: None,
                attributes: None,
                tags: None,
                experiments: None,
            }
        );
    }

    #[test]
    fn full_event() {
        let line = r#" {"unknown":{"deep":[1,2.5,{"x":null}],"s":"\"q\""},"tags":{"sku":"A1","page":"/p"},
            "experiments":[{"experiment_id":12,"variation_id":1,"note":"x"},{"variation_id":2,"experiment_id":11}],
            "attributes":{"os":"linux","browser":"chrome","b":true,"n":null,"i":-3,"f":1.5,"e":1e2,"z":0},
            "value":42,"revenue":-1299,"name":"add_to_cart","type":"conversion","timestamp":1700000000123,
            "project_id":18446744073709551615,"visitor_id":"v\u00e9","session_id":"s1","event_id":"e\n1"}
        "#;
        let e = ok(line);
        assert_eq!(e.event_id, "e\n1");
        assert_eq!(e.session_id.as_deref(), Some("s1"));
        assert_eq!(e.visitor_id, "vé");
        assert_eq!(e.project_id, u64::MAX);
        assert_eq!(e.timestamp, 1_700_000_000_123);
        assert_eq!(e.kind, "conversion");
        assert_eq!(e.name.as_deref(), Some("add_to_cart"));
        assert_eq!(e.revenue, Some(-1299));
        assert_eq!(e.value, Some(Number::from(42u64)));
        let attrs = e.attributes.unwrap();
        let keys: Vec<&str> = attrs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "browser", "e", "f", "i", "n", "os", "z"]);
        assert_eq!(attrs[0].1, AttrValue::Bool(true));
        assert_eq!(attrs[1].1, AttrValue::Str("chrome".into()));
        assert_eq!(attrs[2].1, AttrValue::Num(Number::from_f64(100.0).unwrap()));
        assert_eq!(attrs[3].1, AttrValue::Num(Number::from_f64(1.5).unwrap()));
        assert_eq!(attrs[4].1, AttrValue::Num(Number::from(-3i64)));
        assert_eq!(attrs[5].1, AttrValue::Null);
        assert_eq!(attrs[7].1, AttrValue::Num(Number::from(0u64)));
        assert_eq!(
            e.tags.unwrap(),
            [("page".into(), "/p".into()), ("sku".into(), "A1".into())]
        );
        assert_eq!(
            e.experiments.unwrap(),
            [
                Experiment {
                    experiment_id: 12,
                    variation_id: 1
                },
                Experiment {
                    experiment_id: 11,
                    variation_id: 2
                }
            ]
        );
    }

    use serde_json::Number;

    #[test]
    fn optional_null_is_absent() {
        let e = ok(&with(
            r#","session_id":null,"name":null,"revenue":null,"value":null,"attributes":null,"tags":null,"experiments":null"#,
        ));
        assert_eq!(e, ok(&with("")));
    }

    #[test]
    fn empty_containers_are_kept() {
        let e = ok(&with(r#","attributes":{},"tags":{},"experiments":[]"#));
        assert_eq!(e.attributes, Some(vec![]));
        assert_eq!(e.tags, Some(vec![]));
        assert_eq!(e.experiments, Some(vec![]));
    }

    #[test]
    fn value_keeps_integer_or_float() {
        let v = |s: &str| ok(&with(&format!(r#","value":{s}"#))).value.unwrap();
        assert!(v("3").is_u64());
        assert!(v("-3").is_i64());
        assert!(v("3.0").is_f64());
        assert!(v("1e3").is_f64());
        assert_eq!(v("2.5").as_f64(), Some(2.5));
        assert_eq!(v("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(v("-9223372036854775808").as_i64(), Some(i64::MIN));
        // A finite number beyond the 64-bit integers is kept as a float.
        assert!(v("123456789012345678901234567890").is_f64());
        assert_eq!(v("1e-400").as_f64(), Some(0.0));
        // serde_json reads `-0` as the float -0.0.
        assert!(v("-0").is_f64());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            ok(&with(r#","x":1,"y":[{"a":[true,null,"s"]}],"z":{"k":-1.5e10}"#)),
            ok(&with(""))
        );
    }

    #[test]
    fn whitespace_around_the_object_is_fine() {
        assert!(parse_event(format!(" \t{} \r\n", with("")).as_bytes()).is_ok());
    }

    // ----- line level -------------------------------------------------------------------

    #[test]
    fn line_length_limit() {
        let short = with("");
        let pad = |total: usize| {
            // `,"p":"…"` adds 7 bytes plus the padding.
            let fill = total - short.len() - 7;
            with(&format!(r#","p":"{}""#, "x".repeat(fill)))
        };
        let exact = pad(MAX_LINE_BYTES);
        assert_eq!(exact.len(), MAX_LINE_BYTES);
        assert!(parse_event(exact.as_bytes()).is_ok());
        let over = pad(MAX_LINE_BYTES + 1);
        assert_eq!(reason(&over), "invalid: line over 65536 bytes");
        // Whitespace counts too.
        let mut spaced = exact.into_bytes();
        spaced.push(b' ');
        assert_eq!(reason(&spaced), "invalid: line over 65536 bytes");
    }

    #[test]
    fn not_an_object() {
        for line in ["[]", "[1,2]", "1", "-1", "1.5", "\"x\"", "null", "true"] {
            assert_eq!(reason(line), "invalid: not a JSON object", "{line}");
        }
    }

    #[test]
    fn malformed_json() {
        for line in [
            "",
            "   ",
            "{",
            "{\"event_id\":}",
            "{\"a\" 1}",
            "{'a':1}",
            "{\"a\":1,}",
            "{\"a\":NaN}",
            "{\"a\":Infinity}",
            "{\"a\":-Infinity}",
            "{\"a\":01}",
            "{\"a\":\"tab\there\"}",
            "\u{feff}{}",
        ] {
            assert_invalid(line, "invalid: json: ");
        }
        assert_invalid(format!("{} x", with("")), "invalid: json: trailing characters");
        assert_invalid(format!("{}{{}}", with("")), "invalid: json: trailing characters");
    }

    #[test]
    fn empty_object_is_missing_fields() {
        assert_eq!(reason("{}"), "invalid: missing field event_id");
        assert_eq!(reason(" { } "), "invalid: missing field event_id");
    }

    #[test]
    fn invalid_utf8() {
        let mut line = with(r#","x":"é""#).into_bytes();
        let at = line.len() - 3;
        line[at] = 0xff;
        assert_eq!(reason(&line), format!("invalid: not UTF-8 (byte {})", at - 1));
        let mut line = with(r#","é":1"#).into_bytes();
        let at = line.len() - 5;
        line[at] = 0xc3;
        line[at + 1] = 0x28;
        assert_invalid(&line, "invalid: not UTF-8");
        // Overlong encoding of '/'.
        let mut line = with(r#","x":"ab""#).into_bytes();
        let at = line.len() - 4;
        line[at] = 0xc0;
        line[at + 1] = 0xaf;
        assert_invalid(&line, "invalid: not UTF-8");
        // Outside strings, and at the very start.
        let mut line = with("").into_bytes();
        line.push(0x80);
        assert_eq!(reason(&line), format!("invalid: not UTF-8 (byte {})", line.len() - 1));
        assert_eq!(reason([0xff, b'{', b'}']), "invalid: not UTF-8 (byte 0)");
        // Lone surrogate escapes.
        assert_invalid(with(r#","x":"\ud800""#), "invalid: json: ");
        assert_invalid(with(r#","x":"\udc00x""#), "invalid: json: ");
        // A valid surrogate pair is fine.
        assert_eq!(ok(&replaced(r#""e1""#, r#""\ud83d\ude00""#)).event_id, "😀");
    }

    // ----- required fields --------------------------------------------------------------

    #[test]
    fn missing_or_null_required_fields() {
        for (field, json) in [
            ("event_id", r#""event_id":"e1","#),
            ("visitor_id", r#""visitor_id":"v1","#),
            ("project_id", r#""project_id":7,"#),
            ("timestamp", r#""timestamp":1700000000000,"#),
        ] {
            let missing = replaced(json, "");
            assert_eq!(reason(&missing), format!("invalid: missing field {field}"));
            let null = replaced(json, &format!(r#""{field}":null,"#));
            assert_eq!(reason(&null), format!("invalid: missing field {field}"));
        }
        assert_eq!(
            reason(replaced(r#","type":"click""#, "")),
            "invalid: missing field type"
        );
        assert_eq!(
            reason(replaced(r#""type":"click""#, r#""type":null"#)),
            "invalid: missing field type"
        );
    }

    // ----- strings ----------------------------------------------------------------------

    #[test]
    fn id_lengths_in_bytes() {
        for field in ["event_id", "session_id", "visitor_id"] {
            let line = |v: &str| with(&format!(r#","{field}":"{v}""#));
            let strip = |l: String| {
                // Drop the base's own value of the field so the key is not duplicated.
                l.replacen(&format!(r#""{field}":"{}","#, &field[..1]), "", 1).replacen(
                    &format!(r#""{field}":"{}1","#, &field[..1]),
                    "",
                    1,
                )
            };
            let reason_for = |v: &str| reason(strip(line(v)));
            let ok_for = |v: &str| ok(&strip(line(v)));
            let expect = format!("invalid: {field} must be 1..=128 bytes");
            assert_eq!(reason_for(""), expect);
            assert_eq!(reason_for(&"x".repeat(129)), expect);
            assert_eq!(reason_for(&"é".repeat(65)), expect);
            assert_eq!(reason_for(&r"\u00e9".repeat(65)), expect);
            ok_for(&"x".repeat(128));
            ok_for(&"é".repeat(64));
            ok_for(&r"\u00e9".repeat(64));
            ok_for("😀");
        }
    }

    #[test]
    fn type_length_in_bytes() {
        let line = |v: &str| replaced(r#""type":"click""#, &format!(r#""type":"{v}""#));
        assert_eq!(reason(line("")), "invalid: type must be 1..=64 bytes");
        assert_eq!(reason(line(&"x".repeat(65))), "invalid: type must be 1..=64 bytes");
        assert_eq!(reason(line(&"é".repeat(33))), "invalid: type must be 1..=64 bytes");
        assert_eq!(ok(&line(&"é".repeat(32))).kind, "é".repeat(32));
        assert_eq!(ok(&line(&"x".repeat(64))).kind.len(), 64);
    }

    #[test]
    fn strings_must_be_strings() {
        for (from, field) in [
            (r#""e1""#, "event_id"),
            (r#""v1""#, "visitor_id"),
            (r#""click""#, "type"),
        ] {
            for bad in ["5", "true", "[]", "{}", "1.5"] {
                assert_eq!(
                    reason(replaced(from, bad)),
                    format!("invalid: {field} must be a string"),
                    "{bad}"
                );
            }
        }
        for bad in ["5", "false", "[\"s\"]", "{\"a\":1}"] {
            assert_eq!(
                reason(with(&format!(r#","session_id":{bad}"#))),
                "invalid: session_id must be a string"
            );
            assert_eq!(
                reason(with(&format!(r#","name":{bad}"#))),
                "invalid: name must be a string"
            );
        }
        // `name` has no length limit besides the line's.
        assert_eq!(ok(&with(r#","name":"""#)).name.as_deref(), Some(""));
        assert_eq!(
            ok(&with(&format!(r#","name":"{}""#, "n".repeat(1000))))
                .name
                .map(|n| n.len()),
            Some(1000)
        );
    }

    // ----- integers ---------------------------------------------------------------------

    #[test]
    fn project_id_is_u64() {
        let line = |v: &str| replaced(r#""project_id":7"#, &format!(r#""project_id":{v}"#));
        assert_eq!(ok(&line("0")).project_id, 0);
        assert_eq!(ok(&line("18446744073709551615")).project_id, u64::MAX);
        for bad in [
            "-1",
            "-0",
            "1.0",
            "7.5",
            "1e2",
            "18446744073709551616",
            "-9223372036854775809",
            "\"7\"",
            "true",
            "[7]",
            "{}",
        ] {
            assert_eq!(
                reason(line(bad)),
                "invalid: project_id must be an unsigned 64-bit integer",
                "{bad}"
            );
        }
        assert_invalid(line("1e400"), "invalid: json: number out of range");
    }

    #[test]
    fn timestamp_range() {
        let line = |v: &str| replaced(r#""timestamp":1700000000000"#, &format!(r#""timestamp":{v}"#));
        assert_eq!(ok(&line("946684800000")).timestamp, MIN_TIMESTAMP_MS);
        assert_eq!(ok(&line("4102444799999")).timestamp, END_TIMESTAMP_MS - 1);
        for bad in [
            "946684799999",
            "4102444800000",
            "0",
            "-1",
            "-1700000000000",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
        ] {
            assert_eq!(reason(line(bad)), "invalid: timestamp out of range", "{bad}");
        }
        for bad in ["1700000000000.0", "1.7e12", "\"1700000000000\"", "true", "[1]", "{}"] {
            assert_eq!(reason(line(bad)), "invalid: timestamp must be an integer", "{bad}");
        }
    }

    #[test]
    fn revenue_is_i64() {
        let rev = |v: &str| ok(&with(&format!(r#","revenue":{v}"#))).revenue;
        assert_eq!(rev("0"), Some(0));
        assert_eq!(rev("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(rev("9223372036854775807"), Some(i64::MAX));
        for bad in [
            "9223372036854775808",
            "-9223372036854775809",
            "12.5",
            "12.0",
            "1e3",
            "\"12\"",
            "false",
            "[]",
            "{}",
        ] {
            assert_eq!(
                reason(with(&format!(r#","revenue":{bad}"#))),
                "invalid: revenue must be a signed 64-bit integer",
                "{bad}"
            );
        }
    }

    #[test]
    fn value_is_a_finite_number() {
        for bad in ["\"1\"", "true", "[1]", "{}"] {
            assert_eq!(
                reason(with(&format!(r#","value":{bad}"#))),
                "invalid: value must be a number",
                "{bad}"
            );
        }
        for bad in ["1e400", "-1e400", "1.5e309"] {
            assert_invalid(with(&format!(r#","value":{bad}"#)), "invalid: json: ");
        }
    }

    #[test]
    fn numbers_must_be_finite_everywhere() {
        for extra in [
            r#","x":1e400"#,
            r#","x":-1e400"#,
            r#","x":[1,2,1e400]"#,
            r#","x":{"y":{"z":1e999}}"#,
            r#","attributes":{"a":1e400}"#,
            r#","experiments":[{"experiment_id":1,"variation_id":2,"w":1e400}]"#,
        ] {
            assert_invalid(with(extra), "invalid: json: number out of range");
        }
        // Big integers are finite numbers: fine where ignored.
        ok(&with(r#","x":123456789012345678901234567890"#));
    }

    // ----- attributes, tags, experiments ------------------------------------------------

    #[test]
    fn attributes_rules() {
        let attrs = |v: &str| ok(&with(&format!(r#","attributes":{v}"#))).attributes;
        assert_eq!(
            attrs(r#"{"é":1,"a":"x","B":false,"":null}"#).unwrap(),
            [
                (CompactString::default(), AttrValue::Null),
                ("B".into(), AttrValue::Bool(false)),
                ("a".into(), AttrValue::Str("x".into())),
                ("é".into(), AttrValue::Num(Number::from(1u64))),
            ]
        );
        for bad in ["[]", "[{\"a\":1}]", "\"a\"", "1", "true"] {
            assert_eq!(
                reason(with(&format!(r#","attributes":{bad}"#))),
                "invalid: attributes must be an object",
                "{bad}"
            );
        }
        for bad in [r#"{"a":{}}"#, r#"{"a":{"b":1}}"#, r#"{"a":[]}"#, r#"{"a":["x"]}"#] {
            assert_eq!(
                reason(with(&format!(r#","attributes":{bad}"#))),
                "invalid: attributes values must be strings, numbers, booleans or null",
                "{bad}"
            );
        }
    }

    #[test]
    fn tags_rules() {
        let e = ok(&with(r#","tags":{"z":"1","a":"","m":"é"}"#));
        assert_eq!(
            e.tags.unwrap(),
            [
                ("a".into(), CompactString::default()),
                ("m".into(), "é".into()),
                ("z".into(), "1".into())
            ]
        );
        for bad in ["[]", "\"a\"", "1", "false"] {
            assert_eq!(
                reason(with(&format!(r#","tags":{bad}"#))),
                "invalid: tags must be an object",
                "{bad}"
            );
        }
        for bad in [
            r#"{"a":null}"#,
            r#"{"a":1}"#,
            r#"{"a":true}"#,
            r#"{"a":{}}"#,
            r#"{"a":[]}"#,
        ] {
            assert_eq!(
                reason(with(&format!(r#","tags":{bad}"#))),
                "invalid: tags values must be strings",
                "{bad}"
            );
        }
    }

    #[test]
    fn experiments_rules() {
        let line = |v: &str| with(&format!(r#","experiments":{v}"#));
        let e = ok(&line(
            r#"[{"experiment_id":3,"variation_id":0},{"experiment_id":1,"variation_id":9,"x":{"y":[1]}},{"experiment_id":3,"variation_id":0}]"#,
        ));
        let pairs: Vec<(u64, u64)> = e
            .experiments
            .unwrap()
            .iter()
            .map(|x| (x.experiment_id, x.variation_id))
            .collect();
        assert_eq!(pairs, [(3, 0), (1, 9), (3, 0)]);
        for bad in ["{}", "\"x\"", "1", "true"] {
            assert_eq!(reason(line(bad)), "invalid: experiments must be an array", "{bad}");
        }
        for bad in ["[null]", "[1]", "[[1,2]]", "[\"x\"]"] {
            assert_eq!(
                reason(line(bad)),
                "invalid: experiments entries must be objects",
                "{bad}"
            );
        }
        assert_eq!(
            reason(line(r#"[{"variation_id":1}]"#)),
            "invalid: missing field experiment_id"
        );
        assert_eq!(
            reason(line(r#"[{"experiment_id":1,"variation_id":null}]"#)),
            "invalid: missing field variation_id"
        );
        for (bad, field) in [
            (r#"[{"experiment_id":-1,"variation_id":1}]"#, "experiment_id"),
            (r#"[{"experiment_id":1.0,"variation_id":1}]"#, "experiment_id"),
            (r#"[{"experiment_id":"1","variation_id":1}]"#, "experiment_id"),
            (
                r#"[{"experiment_id":1,"variation_id":18446744073709551616}]"#,
                "variation_id",
            ),
            (r#"[{"experiment_id":1,"variation_id":[]}]"#, "variation_id"),
        ] {
            assert_eq!(
                reason(line(bad)),
                format!("invalid: {field} must be an unsigned 64-bit integer"),
                "{bad}"
            );
        }
    }

    // ----- duplicate keys ---------------------------------------------------------------

    #[test]
    fn duplicate_keys_are_invalid() {
        for (extra, key) in [
            (r#","event_id":"e2""#, "event_id"),
            (r#","type":null"#, "type"),
            (r#","name":null,"name":"n""#, "name"),
            (r#","attributes":{},"attributes":null"#, "attributes"),
            (r#","event\u005fid":"e1""#, "event_id"),
            (r#","x":1,"y":2,"x":1"#, "x"),
            (r#","x":1,"\u0078":2"#, "x"),
            (r#","attributes":{"a":1,"b":2,"a":1}"#, "a"),
            (r#","attributes":{"a":null,"a":null}"#, "a"),
            (r#","tags":{"t":"1","t":"2"}"#, "t"),
            (
                r#","experiments":[{"experiment_id":1,"variation_id":2,"experiment_id":1}]"#,
                "experiment_id",
            ),
            (
                r#","experiments":[{"experiment_id":1,"variation_id":2,"variation_id":2}]"#,
                "variation_id",
            ),
            (
                r#","experiments":[{"experiment_id":1,"variation_id":2,"u":1,"u":1}]"#,
                "u",
            ),
            (r#","x":{"deep":[{"k":1,"k":2}]}"#, "k"),
        ] {
            assert_eq!(
                reason(with(extra)),
                format!("invalid: duplicate key \"{key}\""),
                "{extra}"
            );
        }
        // The same key in different objects is fine.
        ok(&with(r#","x":{"x":{"x":1}},"attributes":{"x":1},"tags":{"x":"x"}"#));
    }

    #[test]
    fn many_unknown_keys() {
        let mut extra = String::new();
        for i in 0..3000 {
            extra.push_str(&format!(",\"k{i}\":{i}"));
        }
        ok(&with(&extra));
        extra.push_str(",\"k1234\":0");
        assert_eq!(reason(with(&extra)), "invalid: duplicate key \"k1234\"");
    }

    // ----- nesting ----------------------------------------------------------------------

    #[test]
    fn nesting_depth() {
        // The event is level 1, so an unknown field can hold MAX_DEPTH - 1 levels.
        let nested = |levels: usize| with(&format!(r#","x":{}{}"#, "[".repeat(levels), "]".repeat(levels)));
        ok(&nested(MAX_DEPTH - 1));
        assert_eq!(reason(nested(MAX_DEPTH)), "invalid: nesting deeper than 64 levels");
        assert_invalid(nested(30_000), "invalid: nesting deeper than 64 levels");
        let objects = |levels: usize| with(&format!(r#","x":{}1{}"#, r#"{"a":"#.repeat(levels), "}".repeat(levels)));
        ok(&objects(MAX_DEPTH - 1));
        assert_invalid(objects(MAX_DEPTH), "invalid: nesting deeper");
        let exp = |levels: usize| {
            with(&format!(
                r#","experiments":[{{"experiment_id":1,"variation_id":1,"x":{}{}}}]"#,
                "[".repeat(levels),
                "]".repeat(levels)
            ))
        };
        ok(&exp(MAX_DEPTH - 3));
        assert_invalid(exp(MAX_DEPTH - 2), "invalid: nesting deeper");
        assert_invalid("[".repeat(MAX_LINE_BYTES), "invalid");
        assert_invalid("{\"a\":".repeat(MAX_LINE_BYTES / 5), "invalid");
    }

    // ----- other deserializers ----------------------------------------------------------

    /// `Ok` events with every zero number made `+0` integer (parsers disagree on `-0` and
    /// `-0.0`), errors with the parser's own syntax message removed.
    fn comparable(r: Result<Event, Invalid>) -> Result<Event, Invalid> {
        let zero = |n: &mut Number| {
            if n.as_f64() == Some(0.0) {
                *n = Number::from(0u64);
            }
        };
        match r {
            Ok(mut e) => {
                if let Some(v) = &mut e.value {
                    zero(v);
                }
                for (_, v) in e.attributes.iter_mut().flatten() {
                    if let AttrValue::Num(n) = v {
                        zero(n);
                    }
                }
                Ok(e)
            }
            Err(Invalid::Json(_) | Invalid::NotUtf8 { .. }) => Err(Invalid::Json(String::new())),
            Err(e) => Err(e),
        }
    }

    /// The floats of an event, and the event with each of them replaced by `0`.
    fn split_floats(mut e: Event) -> (Event, Vec<f64>) {
        let mut floats = Vec::new();
        let mut take = |n: &mut Number| {
            if n.is_f64() {
                floats.push(n.as_f64().unwrap_or_default());
                *n = Number::from(0u64);
            }
        };
        if let Some(v) = &mut e.value {
            take(v);
        }
        for (_, v) in e.attributes.iter_mut().flatten() {
            if let AttrValue::Num(n) = v {
                take(n);
            }
        }
        (e, floats)
    }

    /// Both invalid, or both valid with equal events up to one unit in the last place of
    /// their floats: without its `float_roundtrip` feature, serde_json may round a float
    /// with many digits to a neighbour of the nearest `f64`, which the others return.
    fn same_outcome(a: &Result<Event, Invalid>, b: &Result<Event, Invalid>) -> bool {
        match (a, b) {
            (Err(_), Err(_)) => true,
            (Ok(a), Ok(b)) => {
                let (a, fa) = split_floats(a.clone());
                let (b, fb) = split_floats(b.clone());
                a == b
                    && fa.len() == fb.len()
                    && fa
                        .iter()
                        .zip(&fb)
                        .all(|(x, y)| x == y || (x.to_bits().abs_diff(y.to_bits()) <= 1 && x.signum() == y.signum()))
            }
            _ => false,
        }
    }

    #[test]
    fn other_deserializers_agree_on_the_rules() {
        let mut lines = vec![
            with(
                r#","attributes":{"b":1,"a":"x"},"tags":{"t":"1"},"experiments":[{"experiment_id":1,"variation_id":2}],"value":2.5,"revenue":-3,"name":"n","session_id":"s""#,
            ),
            with(r#","x":{"y":[1,{"z":null}]},"value":123456789012345678901234567890"#),
            with(r#","value":-0"#),
            "{}".into(),
            "[1]".into(),
            "  ".into(),
            with(r#","x":1e400"#),
            with(r#","x":{"k":1,"k":1}"#),
            with(r#","attributes":{"a":[1]}"#),
            with(r#","tags":{"a":null}"#),
            with(r#","revenue":9223372036854775808"#),
            with(r#","x":"\ud800""#),
            replaced("7,", "7.0,"),
            replaced("1700000000000", "1"),
            replaced(r#""e1""#, r#""""#),
            format!("{} x", with("")),
            with(&format!(r#","x":{}{}"#, "[".repeat(100), "]".repeat(100))),
        ];
        lines.push(with(&format!(r#","p":"{}""#, "x".repeat(MAX_LINE_BYTES))));
        for line in &lines {
            let b = line.as_bytes();
            let ours = comparable(parse_event(b));
            assert_eq!(ours, comparable(sonic(b)), "sonic-rs: {line:.200}");
            assert_eq!(ours, comparable(simd(b)), "simd-json: {line:.200}");
        }
    }

    #[test]
    fn fast_path_takes_common_lines_and_leaves_the_rest_to_the_reference() {
        let common = [
            with(""),
            with(
                r#","session_id":"s","name":"n","revenue":-3,"value":0.26,"attributes":{"browser":"safari","screen_width":430,"logged_in":false,"referrer":null,"b":-2,"f":1.5},"tags":{"path":"/c/new"},"experiments":[{"experiment_id":1,"variation_id":2},{"variation_id":4,"experiment_id":3}]"#,
            ),
            with(r#","attributes":{"z":"1","a":"2"},"session_id":null,"value":null,"tags":null,"experiments":[]"#),
            format!(" \t{}\r\n", with(r#" , "value" : 7 , "revenue":9223372036854775807"#)),
            with(",\"revenue\":-9223372036854775808,\"value\":-0.0,\"name\":\"\u{e9}t\u{e9} \u{1f600}\u{7f}\""),
        ];
        for line in &common {
            let fast = crate::fast_event::parse_fast(line);
            assert!(fast.is_some(), "not taken: {line}");
            assert_eq!(fast.map(Ok), Some(parse_reference(line)), "{line}");
        }
        let left = [
            with(r#","name":"a\"b""#),
            with(r#","name":"a\u0041""#),
            with(",\"name\":\"a\u{1}b\""),
            with(r#","x":1"#),
            with(r#","value":1e3"#),
            with(r#","value":1.5E3"#),
            with(r#","value":-0"#),
            with(r#","value":1."#),
            with(r#","value":.5"#),
            with(r#","value":01"#),
            with(r#","value":"1""#),
            with(r#","revenue":9223372036854775808"#),
            with(r#","revenue":1.0"#),
            with(r#","attributes":{"a":1,"a":2}"#),
            with(r#","attributes":{"b":1,"a":2,"b":3}"#),
            with(r#","attributes":{"a":[1]}"#),
            with(r#","attributes":[]"#),
            with(r#","event_id":"e2""#),
            with(r#","session_id":"""#),
            with(&format!(r#","session_id":"{}""#, "s".repeat(129))),
            with(r#","tags":{"a":1}"#),
            with(r#","experiments":[{"experiment_id":1}]"#),
            with(r#","experiments":[{"experiment_id":1,"variation_id":2,"x":3}]"#),
            with(r#","experiments":[{"experiment_id":-1,"variation_id":2}]"#),
            replaced("7,", "07,"),
            replaced("7,", "-7,"),
            replaced("1700000000000", "1"),
            replaced("1700000000000", "null"),
            replaced(r#""e1""#, "null"),
            replaced(r#""click""#, &format!(r#""{}""#, "t".repeat(65))),
            format!("{} x", with("")),
            format!("{},", with("")),
            format!("[{}]", with("")),
            r#"{"event_id":"e1"}"#.into(),
            "{}".into(),
            String::new(),
        ];
        for line in &left {
            assert_eq!(crate::fast_event::parse_fast(line), None, "taken: {line}");
        }
    }

    // ----- property tests ---------------------------------------------------------------

    /// A finite float that serde_json's default (fast) float parser reads back exactly:
    /// at most 15 significant digits and a small decimal exponent.
    fn float() -> impl Strategy<Value = f64> {
        (-999_999_999_999_999i64..=999_999_999_999_999, 0u32..=15).prop_map(|(m, k)| m as f64 / 10f64.powi(k as i32))
    }

    fn number() -> impl Strategy<Value = Number> {
        prop_oneof![
            any::<u64>().prop_map(Number::from),
            any::<i64>().prop_map(Number::from),
            float().prop_filter_map("finite", Number::from_f64),
        ]
    }

    fn attr_value() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            ".{0,12}".prop_map(|s: String| AttrValue::Str(s.into())),
            number().prop_map(AttrValue::Num),
            any::<bool>().prop_map(AttrValue::Bool),
            Just(AttrValue::Null),
        ]
    }

    /// 1..=128 bytes (a char is at most 4 bytes).
    const ID: &str = "(.|[\\x00-\\x1f\"\\\\]){1,32}";

    /// Events whose ids match `id`, `type` matches `kind`, `name` matches `text`, map keys and
    /// tag values match `key`, with these numbers (`value`) and attribute values.
    fn events_of(
        id: &'static str,
        kind: &'static str,
        text: &'static str,
        key: &'static str,
        number: impl Strategy<Value = Number>,
        attr: impl Strategy<Value = AttrValue>,
    ) -> impl Strategy<Value = Event> {
        let ids = (id, proptest::option::of(id), id, any::<u64>());
        let time = (
            MIN_TIMESTAMP_MS..END_TIMESTAMP_MS,
            kind,
            proptest::option::of(text),
            proptest::option::of(any::<i64>()),
            proptest::option::of(number),
        );
        let maps = (
            proptest::option::of(proptest::collection::btree_map(key, attr, 0..6)),
            proptest::option::of(proptest::collection::btree_map(key, key, 0..4)),
            proptest::option::of(proptest::collection::vec(
                (any::<u64>(), any::<u64>()).prop_map(|(e, v)| Experiment {
                    experiment_id: e,
                    variation_id: v,
                }),
                0..4,
            )),
        );
        (ids, time, maps).prop_map(
            |(
                (event_id, session_id, visitor_id, project_id),
                (timestamp, kind, name, revenue, value),
                (attributes, tags, experiments),
            )| Event {
                event_id: event_id.into(),
                session_id: session_id.map(Into::into),
                visitor_id: visitor_id.into(),
                project_id,
                timestamp,
                kind: kind.into(),
                name: name.map(Into::into),
                revenue,
                value,
                attributes: attributes
                    .map(|m: BTreeMap<String, _>| m.into_iter().map(|(k, v)| (k.into(), v)).collect()),
                tags: tags
                    .map(|m: BTreeMap<String, String>| m.into_iter().map(|(k, v)| (k.into(), v.into())).collect()),
                experiments,
            },
        )
    }

    fn event() -> impl Strategy<Value = Event> {
        events_of(ID, ".{1,16}", ".{0,20}", ".{0,8}", number(), attr_value())
    }

    /// Events in the shape producers write: strings without escapes or control bytes,
    /// integers and short decimals, no unknown fields.
    fn common_event() -> impl Strategy<Value = Event> {
        const ID: &str = "[a-zA-Z0-9_./:@ \u{e9}\u{1f600}-]{1,32}";
        const KIND: &str = "[a-zA-Z0-9_./:@ \u{e9}\u{1f600}-]{1,16}";
        const TEXT: &str = "[a-zA-Z0-9_./:@ \u{e9}\u{1f600}-]{0,20}";
        const KEY: &str = "[a-zA-Z0-9_./:@ \u{e9}\u{1f600}-]{0,8}";
        let decimal = (-99_999i64..=99_999, 1u32..=4).prop_map(|(m, k)| {
            let p = 10i64.pow(k);
            let sign = if m < 0 { "-" } else { "" };
            let text = format!("{sign}{}.{:0>width$}", m.abs() / p, m.abs() % p, width = k as usize);
            Number::from_f64(text.parse().unwrap_or(0.0)).unwrap_or_else(|| 0.into())
        });
        let number = prop_oneof![
            any::<u64>().prop_map(Number::from),
            any::<i64>().prop_map(Number::from),
            decimal
        ];
        let attr = prop_oneof![
            TEXT.prop_map(|s: String| AttrValue::Str(s.into())),
            number.clone().prop_map(AttrValue::Num),
            any::<bool>().prop_map(AttrValue::Bool),
            Just(AttrValue::Null),
        ];
        events_of(ID, KIND, TEXT, KEY, number, attr)
    }

    /// Lines that are almost JSON events: valid ones with a few bytes changed.
    fn mutated_line() -> impl Strategy<Value = Vec<u8>> {
        let edits = proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4);
        (event(), edits).prop_map(|(e, edits)| {
            let mut line = serde_json::to_vec(&e.input_json()).unwrap_or_default();
            for (at, byte, op) in edits {
                if line.is_empty() {
                    break;
                }
                let i = at.index(line.len());
                match op {
                    0 => line[i] = byte,
                    1 => line.insert(i, byte),
                    _ => {
                        line.remove(i);
                    }
                }
            }
            line
        })
    }

    fn json_soup() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop::sample::select(&br#"{}[]":,0123456789.eE+- \tnulltruefalse\u00e9xae_idtypeNaN"#[..]),
            0..120,
        )
    }

    /// The fast path answers only when the reference parser accepts the line, and then with
    /// the same event.
    fn check_fast_path(line: &[u8]) -> Result<Option<Event>, TestCaseError> {
        let Ok(text) = std::str::from_utf8(line) else {
            return Ok(None);
        };
        let fast = crate::fast_event::parse_fast(text);
        if let Some(event) = &fast {
            prop_assert_eq!(Ok(event.clone()), parse_reference(text), "{:.300}", text);
        }
        Ok(fast)
    }

    fn check_no_panic(line: &[u8]) -> Result<(), TestCaseError> {
        check_fast_path(line)?;
        let parsed = parse_event(line);
        prop_assert_eq!(&parse_event_reference(line), &parsed);
        if let Err(e) = &parsed {
            let r = e.to_string();
            prop_assert!(r.starts_with("invalid"), "{}", r);
        }
        // The owned variant gives the same result and the line as a dead letter shows it.
        let (text, owned) = parse_event_owned(line.to_vec());
        prop_assert_eq!(owned, parsed);
        prop_assert_eq!(text, String::from_utf8_lossy(line).into_owned());
        Ok(())
    }

    proptest! {
        // No regression files: this module owns no directory to keep them in.
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_bytes_never_panic(line in proptest::collection::vec(any::<u8>(), 0..400)) {
            check_no_panic(&line)?;
        }

        #[test]
        fn json_soup_never_panics(line in json_soup()) {
            check_no_panic(&line)?;
        }

        #[test]
        fn mutated_events_never_panic_and_parsers_agree(line in mutated_line()) {
            check_no_panic(&line)?;
            // On a line that is both malformed and breaks a rule, parsers may name either
            // problem (simd-json parses the whole line first, sonic-rs reads `00` as `0`
            // then fails on the second `0`): compare the outcome, not the reason.
            let ours = comparable(parse_event(&line));
            let sonic = comparable(sonic(&line));
            let simd = comparable(simd(&line));
            prop_assert!(same_outcome(&ours, &sonic), "sonic-rs: {:?} vs {:?}", ours, sonic);
            prop_assert!(same_outcome(&ours, &simd), "simd-json: {:?} vs {:?}", ours, simd);
        }

        #[test]
        fn common_shape_events_take_the_fast_path(event in common_event()) {
            let line = serde_json::to_string(&event.input_json()).unwrap_or_default();
            prop_assert_eq!(crate::fast_event::parse_fast(&line), Some(event.clone()), "{}", line);
            prop_assert_eq!(parse_reference(&line), Ok(event));
        }

        /// Producers write map keys in any order: the fast path sorts them (by position up to
        /// 16 keys, else the pairs), rejects repeated keys, and agrees with the reference.
        #[test]
        fn maps_in_any_key_order_parse_alike(
            event in common_event(),
            extra in proptest::collection::btree_map("(_shared_8+)?[a-z]{1,3}", any::<u32>(), 0..20),
            seed in any::<u64>(),
            repeat in any::<bool>(),
        ) {
            let mut json = serde_json::to_value(event.input_json()).unwrap_or_default();
            let mut pairs: Vec<(String, serde_json::Value)> = json
                .as_object_mut()
                .and_then(|o| o.remove("attributes"))
                .and_then(|a| a.as_object().cloned())
                .map(|m| m.into_iter().collect())
                .unwrap_or_default();
            // Extra keys are new keys: one the event's own attributes already have (`xp` from
            // `p`) would be a repeated key where the case asks for none.
            let own: std::collections::BTreeSet<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
            pairs.extend(
                extra
                    .into_iter()
                    .map(|(k, v)| (format!("x{k}"), v.into()))
                    .filter(|(k, _)| !own.contains(k)),
            );
            // Fisher-Yates with a small LCG from the seed.
            let mut r = seed | 1;
            for i in (1..pairs.len()).rev() {
                r = r.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                pairs.swap(i, (r >> 33) as usize % (i + 1));
            }
            if repeat && !pairs.is_empty() {
                let again = pairs[(seed % pairs.len() as u64) as usize].clone();
                pairs.insert((seed / 7 % (pairs.len() as u64 + 1)) as usize, again);
            }
            let attrs: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
                .collect();
            let head = json.to_string();
            let line = format!("{},\"attributes\":{{{}}}}}", &head[..head.len() - 1], attrs.join(","));
            let reference = parse_reference(&line);
            if repeat && !pairs.is_empty() {
                prop_assert!(matches!(reference, Err(Invalid::DuplicateKey(_))), "{:?}", reference);
                prop_assert_eq!(crate::fast_event::parse_fast(&line), None, "{}", line);
            } else {
                prop_assert!(reference.is_ok(), "{:?}", reference);
                prop_assert_eq!(crate::fast_event::parse_fast(&line).map(Ok), Some(reference), "{}", line);
            }
        }

        #[test]
        fn valid_events_round_trip(event in event()) {
            let line = serde_json::to_vec(&event.input_json()).unwrap_or_default();
            prop_assert!(line.len() <= MAX_LINE_BYTES);
            check_fast_path(&line)?;
            prop_assert_eq!(parse_event(&line), Ok(event.clone()));
            prop_assert_eq!(sonic(&line), Ok(event.clone()));
            prop_assert_eq!(simd(&line), Ok(event));
        }
    }
}
