//! One session's state and its snapshot (pure code, no timely).
//!
//! Memory and output speed drive the layout: the listed events (the first `max_events` in
//! `(timestamp, event_id)` order) are kept *pre-serialized* in one byte arena per session, so a
//! snapshot is a header plus a run of `memcpy`s. Each event's `attributes` part (the keys whose
//! value differs from the session's) is kept apart as a short tail, rebuilt only in the rare
//! case that an earlier-timestamped event changes a session attribute's value. Events past the
//! cap keep only what exact counting and merging need (id, timestamp, revenue).

use std::cell::RefCell;
use std::cmp::Ordering;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use super::routing::Routing;
use crate::event::{AttrValue, CompactString, Event};
use crate::json::{self, JsonOut};
use crate::prefetch::prefetch;
use crate::scratch::with_scratch;

/// Session semantics parameters (see `shared/spec/sessions.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Window length `W`, in milliseconds; the timely timestamp is `timestamp / W`.
    pub window_ms: u64,
    /// Inactivity gap that closes a session, in milliseconds.
    pub gap_ms: u64,
    /// Out-of-orderness bound `L` of each partition's watermark, in milliseconds.
    pub lateness_ms: u64,
    /// Most events listed in a snapshot, in events; counters stay exact past it.
    pub max_events: usize,
    /// Attach to each snapshot the session's full state (bytes), for sinks that make the job
    /// resumable from their contents (SessionDB). Off by default (boolean).
    pub emit_state: bool,
    /// Which worker owns each session key (not semantics: every routing gives the same
    /// output). [`Routing::Hash`] by default; the jobs pick [`Routing::for_input`].
    pub routing: Routing,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window_ms: 60_000,
            gap_ms: 30 * 60_000,
            lateness_ms: 5_000,
            max_events: 1000,
            emit_state: false,
            routing: Routing::Hash,
        }
    }
}

/// The largest `max_events` accepted (events). A session's listed events live in one arena
/// addressed by `u32` offsets: at most this many events of at most
/// [`MAX_LINE_BYTES`](crate::event::MAX_LINE_BYTES) input bytes each (whose JSON is re-written
/// no longer than about the input: escapes round-trip at their length, numbers are short), plus
/// the evicted bytes the arena keeps until they are half of it, stay far below 4 GiB.
pub const MAX_EVENTS_LIMIT: usize = 10_000;

// Twice (evicted bytes) the listed events at twice a maximal line (room for re-written JSON)
// plus the id, plus the 4 KiB of garbage always tolerated and one event being added.
const _: () = assert!(
    2 * MAX_EVENTS_LIMIT as u64 * (2 * crate::event::MAX_LINE_BYTES as u64 + 255)
        + 4096
        + 2 * (2 * crate::event::MAX_LINE_BYTES as u64 + 255)
        < u32::MAX as u64
);

impl SessionConfig {
    /// Checks the parameters make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.window_ms == 0 {
            return Err("window must be at least 1 ms".into());
        }
        if self.max_events > MAX_EVENTS_LIMIT {
            return Err(format!(
                "max-events is {}, at most {MAX_EVENTS_LIMIT} (a listed event's bytes are addressed \
                 with 32 bits; such a snapshot would be far over any sink's message size anyway)",
                self.max_events
            ));
        }
        Ok(())
    }

    /// `w(t)`: the window of an event time (ms). Times before the epoch map to window 0.
    pub fn window_of(&self, t: i64) -> u64 {
        if t <= 0 {
            0
        } else {
            t as u64 / self.window_ms
        }
    }

    /// How many windows a closed key stays in the closed set: `ceil(gap / W)`.
    pub fn closed_windows(&self) -> u64 {
        self.gap_ms.div_ceil(self.window_ms)
    }

    /// The window at which a session with this `end`, last changed in window `m`, closes:
    /// the smallest window `c >= m` with `end + gap < (c + 1) * W`.
    pub fn close_window(&self, end: i64, m: u64) -> u64 {
        let due = (end as i128 + self.gap_ms as i128).max(0) as u128 / self.window_ms as u128;
        (due.min(u64::MAX as u128) as u64).max(m)
    }

    /// Whether event time `t` falls within the gap of a session spanning `[start, end]`.
    pub fn within_gap(&self, start: i64, end: i64, t: i64) -> bool {
        let gap = self.gap_ms as i128;
        (start as i128 - gap) <= t as i128 && t as i128 <= end as i128 + gap
    }
}

/// What a snapshot says about its session, besides the JSON itself (for sinks and queries).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Output session id (`{visitor_id}@{t}` for sessions without a client id).
    pub session_id: CompactString,
    /// Whether the session is gap-based (the event had no `session_id`).
    pub gap_based: bool,
    /// Project of the first event.
    pub project_id: u64,
    /// Visitor of the first event.
    pub visitor_id: CompactString,
    /// Smallest event time, ms.
    pub start: i64,
    /// Largest event time, ms.
    pub end: i64,
    /// Accepted events.
    pub event_count: u64,
    /// Sum of revenue, minor units.
    pub revenue: i128,
    /// Sorted `(experiment_id, variation_id)` pairs.
    pub experiments: Vec<(u64, u64)>,
    /// Window index `m` of this snapshot.
    pub window: u64,
    /// Whether this is the session's final snapshot.
    pub closed: bool,
    /// Window in which the session opened (with the id, it names the session for its life:
    /// a client id reused after its closed-set entry expired is a new session).
    pub opened_window: u64,
    /// Project of the event that opened the session (unlike `project_id`, which follows the
    /// first event in `(timestamp, event_id)` order, it never changes: fit for a row key).
    pub opened_project: u64,
    /// Survivor's id when this session was merged into another.
    pub merged_into: Option<String>,
    /// The spec's snapshot JSON object (one line, no newline).
    pub json: String,
    /// The session's state ([`Session::to_state`]) when `emit_state` is on and the session is
    /// still open after this window.
    pub state: Option<Vec<u8>>,
}

/// A session attribute: the key and value at `attr_sets[set][pos]` (the set of the event that
/// gave it, so neither is stored twice), and that event's `(timestamp, event_id)` at
/// `origins[origin]`. 12 bytes instead of the 80 of owned key, value and id.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct SessionAttr {
    origin: u32,
    set: u32,
    /// Position in the set (an event's line is at most 64 KiB, so it has fewer attributes).
    pos: u16,
}

/// The distinct attribute (or experiment) sets of a session's events, each stored once; events
/// refer to them by index (`u32`: a session can have any number of distinct sets).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Sets<E> {
    sets: Vec<Vec<E>>,
    /// Hash of a set -> the index of a set with that hash, once there are more than
    /// `SETS_SCAN` sets (a scan is cheaper below); rebuilt when needed after a restore.
    #[serde(skip)]
    index: Option<Box<HashMap<u64, u32>>>,
}

/// Up to this many sets, interning compares with each.
const SETS_SCAN: usize = 8;

impl<E> Default for Sets<E> {
    fn default() -> Self {
        Sets {
            sets: Vec::new(),
            index: None,
        }
    }
}

impl<E: Clone + Eq + std::hash::Hash> Sets<E> {
    /// The index of `set`, stored first if it is new. O(1) however many sets there are.
    fn intern(&mut self, set: &[E]) -> u32 {
        // Four billion sets of one session would not fit in memory: the cast cannot wrap.
        let next = self.sets.len() as u32;
        if self.sets.len() <= SETS_SCAN {
            // Newest first: an event most often repeats the map the one before it brought.
            if let Some(i) = self.sets.iter().rposition(|s| s.as_slice() == set) {
                return i as u32;
            }
        } else {
            let hash = |s: &[E]| ahash::RandomState::with_seeds(5, 6, 7, 8).hash_one(s);
            let sets = &self.sets;
            let index = self
                .index
                .get_or_insert_with(|| Box::new(sets.iter().enumerate().map(|(i, s)| (hash(s), i as u32)).collect()));
            let h = hash(set);
            match index.get(&h) {
                Some(&i) if sets[i as usize].as_slice() == set => return i,
                // A new set, or one whose hash collides with another's: stored (again), which
                // costs memory, never correctness.
                _ => {
                    index.insert(h, next);
                }
            }
        }
        self.sets.push(set.to_vec());
        next
    }

    fn get(&self, i: u32) -> &[E] {
        &self.sets[i as usize]
    }
}

/// A listed event: where its bytes are in the arena.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Listed {
    ts: i64,
    revenue: i64,
    /// Offset of `[id][body][tail]` in the arena.
    off: u32,
    /// Length of the JSON up to (not including) its `attributes` part and closing brace.
    body_len: u32,
    /// Length of `,"attributes":{..}}` or `}`.
    tail_len: u32,
    /// Index in `attr_sets`, or `NO_ATTRS`.
    attrs: u32,
    /// Index in `exp_sets`, or `NO_ATTRS`.
    exps: u32,
    /// The low bits of the id's hash: duplicate checks compare ids only when these match.
    tag: u16,
    id_len: u8,
}

const NO_ATTRS: u32 = u32::MAX;
/// Above this many listed events, duplicate checks use a hash index instead of a scan.
const SCAN_LIMIT: usize = 24;

/// An accepted event past the list cap: what counting and an exact merge still need.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Unlisted {
    ts: i64,
    revenue: i64,
    /// Index in `attr_sets`, or `NO_ATTRS`.
    attrs: u32,
    /// Index in `exp_sets`, or `NO_ATTRS`.
    exps: u32,
}

/// One open session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    id: Box<str>,
    opened: u64,
    opened_project: u64,
    visitor_id: CompactString,
    project_id: u64,
    first_ts: i64,
    first_id: CompactString,
    start: i64,
    end: i64,
    event_count: u64,
    revenue: i128,
    attrs: Vec<SessionAttr>,
    /// `(timestamp, event_id)` of the events that gave the session attributes
    /// (`SessionAttr::origin`); usually one or two, however many attributes there are.
    origins: Vec<(i64, CompactString)>,
    experiments: Vec<(u64, u64)>,
    attr_sets: Sets<(CompactString, AttrValue)>,
    exp_sets: Sets<(u64, u64)>,
    listed: Vec<Listed>,
    /// The listed events' `[id][body][tail]` pieces, UTF-8 as everything written into it is.
    arena: String,
    garbage: usize,
    /// Listed ids' hashes (with counts) once there are more than `SCAN_LIMIT`. Boxed: most
    /// sessions never have one, and a map inline would cost each session ~40 bytes.
    listed_hashes: Option<Box<HashMap<u64, u32>>>,
    unlisted: Option<Box<HashMap<Box<str>, Unlisted>>>,
    /// Window at which the session is due to close (maintained by the store; `u64::MAX` until
    /// first indexed).
    pub close_at: u64,
    /// `window + 1` of the last window that touched it (maintained by the store).
    pub touched: u64,
    /// The window of the session's one entry in the store's close index (`u64::MAX`: none).
    /// It is at most `close_at`; reaching it early re-files the entry at `close_at`.
    pub indexed_at: u64,
}

/// An event about to be listed: its sort key, bytes and attribute set.
struct Incoming<'a> {
    ts: i64,
    id: &'a str,
    revenue: i64,
    body: &'a str,
    /// Index in `attr_sets` (already interned), or `NO_ATTRS`.
    attrs: u32,
    exps: Option<&'a [(u64, u64)]>,
}

thread_local! {
    /// The scratch buffers of [`Session::accept`] (an event's body and attribute tail, copied
    /// into the session's arena from there): reused instead of allocated for every event.
    static SCRATCH: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
    /// The buffer [`Session::snapshot`] writes a snapshot's JSON into (per worker thread, as
    /// large as the largest snapshot so far: bounded by the list cap, `max_events`).
    static SNAPSHOT_SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

fn id_hash(id: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    h.write(id.as_bytes());
    h.finish()
}

/// The JSON of an event up to its attributes: `{"event_id":..,"timestamp":..,"type":..,...`.
fn event_body(e: &Event, out: &mut String) {
    // Quotes around strings are part of the literal text around them.
    out.put("{\"event_id\":\"");
    json::write_str_content(out, &e.event_id);
    out.put("\",\"timestamp\":");
    json::write_int(out, e.timestamp);
    out.put(",\"type\":\"");
    json::write_str_content(out, &e.kind);
    out.put_ascii(b'"');
    if let Some(name) = &e.name {
        out.put(",\"name\":\"");
        json::write_str_content(out, name);
        out.put_ascii(b'"');
    }
    if let Some(r) = e.revenue {
        out.put(",\"revenue\":");
        json::write_int(out, r);
    }
    if let Some(v) = &e.value {
        out.put(",\"value\":");
        json::write_number(out, v);
    }
    if let Some(tags) = &e.tags {
        out.put(",\"tags\":{");
        for (i, (k, v)) in tags.iter().enumerate() {
            out.put(if i > 0 { ",\"" } else { "\"" });
            json::write_str_content(out, k);
            out.put("\":\"");
            json::write_str_content(out, v);
            out.put_ascii(b'"');
        }
        out.put_ascii(b'}');
    }
    if let Some(exps) = &e.experiments {
        out.put(",\"experiments\":[");
        for (i, x) in exps.iter().enumerate() {
            if i > 0 {
                out.put_ascii(b',');
            }
            out.put("{\"experiment_id\":");
            json::write_int(out, x.experiment_id);
            out.put(",\"variation_id\":");
            json::write_int(out, x.variation_id);
            out.put_ascii(b'}');
        }
        out.put_ascii(b']');
    }
}

impl Session {
    /// Opens a session in window `m` with its first event (not yet accepted: call
    /// [`Session::accept`]).
    pub fn open(id: &str, first: &Event, m: u64) -> Session {
        Session {
            id: id.into(),
            opened: m,
            opened_project: first.project_id,
            visitor_id: first.visitor_id.as_str().into(),
            project_id: first.project_id,
            first_ts: first.timestamp,
            first_id: first.event_id.as_str().into(),
            start: first.timestamp,
            end: first.timestamp,
            event_count: 0,
            revenue: 0,
            attrs: Vec::new(),
            origins: Vec::new(),
            experiments: Vec::new(),
            attr_sets: Sets::default(),
            exp_sets: Sets::default(),
            listed: Vec::new(),
            arena: String::new(),
            garbage: 0,
            listed_hashes: None,
            unlisted: None,
            close_at: u64::MAX,
            touched: 0,
            indexed_at: u64::MAX,
        }
    }

    /// The output session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Smallest event time, ms.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// Largest event time, ms.
    pub fn end(&self) -> i64 {
        self.end
    }

    /// Accepted events.
    pub fn event_count(&self) -> u64 {
        self.event_count
    }

    fn listed_id(&self, l: &Listed) -> &[u8] {
        &self.arena.as_bytes()[l.off as usize..l.off as usize + l.id_len as usize]
    }

    /// [`Session::listed_id`] as the string it was listed as.
    fn listed_id_str(&self, l: &Listed) -> &str {
        self.piece(l.off as usize, l.id_len as usize)
    }

    /// `len` bytes of the arena from `from`: a listed event's id, body or tail, or several in a
    /// row. Pieces are whole `&str`s pushed one after the other, so their ends are character
    /// boundaries; a slice that is not would be a bug, caught by the tests' debug build.
    fn piece(&self, from: usize, len: usize) -> &str {
        let piece = self.arena.get(from..from + len);
        debug_assert!(piece.is_some(), "arena bytes {from}..+{len} are not a piece");
        piece.unwrap_or_default()
    }

    fn cmp_listed(&self, l: &Listed, ts: i64, id: &str) -> Ordering {
        l.ts.cmp(&ts).then_with(|| self.listed_id(l).cmp(id.as_bytes()))
    }

    /// Whether this session already accepted an event with this id.
    pub fn has_event(&self, id: &str) -> bool {
        let hash = id_hash(id);
        let tag = hash as u16;
        let scan = |s: &Session| s.listed.iter().any(|l| l.tag == tag && s.listed_id(l) == id.as_bytes());
        let listed = match &self.listed_hashes {
            None => scan(self),
            Some(h) => h.contains_key(&hash) && scan(self),
        };
        listed || self.unlisted.as_ref().is_some_and(|u| u.contains_key(id))
    }

    /// Accepts an event (the caller checked it is not a duplicate).
    pub fn accept(&mut self, e: &Event, cfg: &SessionConfig) {
        with_scratch(&SCRATCH, |(body, tail)| self.accept_with(e, cfg, body, tail));
    }

    /// [`Session::accept`] with scratch buffers for the event's body and attribute tail.
    fn accept_with(&mut self, e: &Event, cfg: &SessionConfig, body: &mut String, tail: &mut String) {
        body.clear();
        event_body(e, body);
        let attrs = self.intern_attrs(e.attributes.as_deref().filter(|a| !a.is_empty()));
        self.offer_first(e.timestamp, &e.event_id, &e.visitor_id, e.project_id);
        let changed = self.count_in(e.timestamp, &e.event_id, e.revenue.unwrap_or(0), attrs);
        let mut exps: Vec<(u64, u64)> = e
            .experiments
            .iter()
            .flatten()
            .map(|x| (x.experiment_id, x.variation_id))
            .collect();
        exps.sort_unstable();
        exps.dedup();
        for x in &exps {
            self.add_experiment(*x);
        }
        let exps = (!exps.is_empty()).then_some(exps.as_slice());
        let inc = Incoming {
            ts: e.timestamp,
            id: &e.event_id,
            revenue: e.revenue.unwrap_or(0),
            body,
            attrs,
            exps,
        };
        self.list(inc, cfg, tail);
        if changed {
            self.rebuild_tails();
        }
    }

    /// Counts an event into the aggregates; returns whether a session attribute changed value.
    /// `set` is the event's interned attribute set (or `NO_ATTRS`).
    fn count_in(&mut self, ts: i64, id: &str, revenue: i64, set: u32) -> bool {
        self.event_count += 1;
        self.revenue += revenue as i128;
        self.start = self.start.min(ts);
        self.end = self.end.max(ts);
        if set == NO_ATTRS {
            return false;
        }
        if self.attrs.is_empty() {
            // The first attribute map usually has all the keys the session will have: room for
            // them at once (not 4, 8, then 16).
            self.attrs.reserve_exact(self.attr_sets.get(set).len());
        }
        let mut changed = false;
        let mut origin = None;
        // Both the event's attributes and the session's are sorted by key: one merge walk.
        let mut from = 0;
        for pos in 0..self.attr_sets.get(set).len() {
            let (c, next) = self.offer_attr(from, set, pos as u16, ts, id, &mut origin);
            changed |= c;
            from = next;
        }
        // Origins no attribute refers to any more (an earlier event took their keys) are
        // dropped once there are twice as many origins as attributes: amortized O(1) per event.
        if origin.is_some() && self.origins.len() >= 2 * self.attrs.len().max(4) {
            self.drop_unused_origins();
        }
        changed
    }

    /// Offers the attribute at `attr_sets[set][pos]` from event `(ts, id)`, looking for its key
    /// from index `from` of the sorted attributes on; returns whether an existing key changed
    /// value, and the index after the key's. `origin` caches the event's index in `origins`.
    fn offer_attr(
        &mut self,
        from: usize,
        set: u32,
        pos: u16,
        ts: i64,
        id: &str,
        origin: &mut Option<u32>,
    ) -> (bool, usize) {
        let (key, value) = &self.attr_sets.get(set)[pos as usize];
        let key = key.as_str();
        let rest = &self.attrs[from..];
        let found = if rest.len() > 16 {
            rest.binary_search_by(|a| self.attr(a).0.as_str().cmp(key))
        } else {
            // Usually the next key is the one: one comparison.
            let mut i = 0;
            loop {
                match rest.get(i).map(|a| self.attr(a).0.as_str().cmp(key)) {
                    Some(Ordering::Less) => i += 1,
                    Some(Ordering::Equal) => break Ok(i),
                    _ => break Err(i),
                }
            }
        }
        .map(|i| from + i)
        .map_err(|i| from + i);
        // Whether the event takes the key, and whether that changes the value.
        let (take, changed) = match found {
            Err(_) => (true, false),
            Ok(at) => {
                let a = self.attrs[at];
                let (ots, oid) = &self.origins[a.origin as usize];
                let earlier = (ts, id.as_bytes()) < (*ots, oid.as_bytes());
                let differs = (a.set, a.pos) != (set, pos) && self.attr(&a).1 != *value;
                (earlier, earlier && differs)
            }
        };
        if take {
            let origins = &mut self.origins;
            let origin = *origin.get_or_insert_with(|| {
                // The event, if one of the last few origins is it, else a new entry.
                let recent = origins.len().saturating_sub(4);
                match origins[recent..]
                    .iter()
                    .rposition(|(t, x)| *t == ts && x.as_str() == id)
                {
                    Some(i) => (recent + i) as u32,
                    None => {
                        origins.push((ts, id.into()));
                        (origins.len() - 1) as u32
                    }
                }
            });
            let attr = SessionAttr { origin, set, pos };
            match found {
                Err(at) => self.attrs.insert(at, attr),
                Ok(at) => self.attrs[at] = attr,
            }
        }
        (changed, found.unwrap_or_else(|p| p) + 1)
    }

    /// Drops the `origins` no attribute refers to.
    fn drop_unused_origins(&mut self) {
        let mut to = vec![u32::MAX; self.origins.len()];
        let mut kept = Vec::new();
        for a in self.attrs.iter_mut() {
            let slot = &mut to[a.origin as usize];
            if *slot == u32::MAX {
                *slot = kept.len() as u32;
                kept.push(std::mem::take(&mut self.origins[a.origin as usize]));
            }
            a.origin = *slot;
        }
        self.origins = kept;
    }

    /// The key and value of a session attribute.
    fn attr(&self, a: &SessionAttr) -> &(CompactString, AttrValue) {
        &self.attr_sets.get(a.set)[a.pos as usize]
    }

    fn add_experiment(&mut self, pair: (u64, u64)) {
        if let Err(pos) = self.experiments.binary_search(&pair) {
            self.experiments.insert(pos, pair);
        }
    }

    /// Offers the first-event identity `(ts, id)` for `visitor_id` / `project_id`.
    fn offer_first(&mut self, ts: i64, id: &str, visitor: &str, project: u64) {
        if (ts, id.as_bytes()) < (self.first_ts, self.first_id.as_bytes()) {
            self.first_ts = ts;
            self.first_id = id.into();
            self.visitor_id = visitor.into();
            self.project_id = project;
        }
    }

    fn intern_attrs(&mut self, attrs: Option<&[(CompactString, AttrValue)]>) -> u32 {
        attrs.map_or(NO_ATTRS, |a| self.attr_sets.intern(a))
    }

    fn intern_exps(&mut self, exps: Option<&[(u64, u64)]>) -> u32 {
        exps.map_or(NO_ATTRS, |x| self.exp_sets.intern(x))
    }

    /// `,"attributes":{..}}` with the keys whose value differs from the session's, or `}`.
    fn write_tail(&self, set: u32, out: &mut String) {
        let mut first = true;
        if set != NO_ATTRS {
            // Both the set and the session's attributes are sorted by key: one merge walk.
            let mut rest = self.attrs.as_slice();
            for (i, (k, v)) in self.attr_sets.get(set).iter().enumerate() {
                let same = loop {
                    let Some(a) = rest.first() else { break false };
                    if (a.set, a.pos as usize) == (set, i) {
                        // The session took this very attribute from an event with this set.
                        break true;
                    }
                    let (ak, av) = self.attr(a);
                    match ak.as_str().cmp(k.as_str()) {
                        Ordering::Less => rest = &rest[1..],
                        Ordering::Equal => break av == v,
                        Ordering::Greater => break false,
                    }
                };
                if same {
                    continue;
                }
                out.put(if first { ",\"attributes\":{\"" } else { ",\"" });
                first = false;
                json::write_attr_member(out, k, v);
            }
        }
        if !first {
            out.put_ascii(b'}');
        }
        out.put_ascii(b'}');
    }

    /// Puts an accepted event into the list (or past the cap); `tail` is scratch space.
    fn list(&mut self, inc: Incoming<'_>, cfg: &SessionConfig, tail: &mut String) {
        // Events mostly come in time order: after the last listed one is checked first.
        let pos = match self.listed.last() {
            Some(last) if self.cmp_listed(last, inc.ts, inc.id) == Ordering::Less => self.listed.len(),
            None => 0,
            _ => self
                .listed
                .partition_point(|l| self.cmp_listed(l, inc.ts, inc.id) == Ordering::Less),
        };
        let attrs = inc.attrs;
        let exps = self.intern_exps(inc.exps);
        if pos >= cfg.max_events {
            self.unlist(
                inc.id,
                Unlisted {
                    ts: inc.ts,
                    revenue: inc.revenue,
                    attrs,
                    exps,
                },
            );
            return;
        }
        tail.clear();
        self.write_tail(attrs, tail);
        // Grow by a quarter, not by doubling: sessions are small and many, so slack is memory.
        let need = inc.id.len() + inc.body.len() + tail.len();
        if self.arena.capacity() - self.arena.len() < need {
            self.arena.reserve_exact(need.max(self.arena.len() / 4));
        }
        if self.listed.len() == self.listed.capacity() {
            self.listed.reserve_exact((self.listed.len() / 4).max(1));
        }
        let off = self.arena.len();
        self.arena.push_str(inc.id);
        self.arena.push_str(inc.body);
        let before = self.arena.len();
        self.arena.push_str(tail);
        let entry = Listed {
            ts: inc.ts,
            revenue: inc.revenue,
            off: off as u32,
            body_len: inc.body.len() as u32,
            tail_len: (self.arena.len() - before) as u32,
            attrs,
            exps,
            id_len: inc.id.len() as u8,
            tag: id_hash(inc.id) as u16,
        };
        self.listed.insert(pos, entry);
        if let Some(h) = &mut self.listed_hashes {
            *h.entry(id_hash(inc.id)).or_insert(0) += 1;
        } else if self.listed.len() > SCAN_LIMIT {
            let mut h = HashMap::with_capacity(self.listed.len() * 2);
            for l in &self.listed {
                let id = self.listed_id_str(l);
                *h.entry(id_hash(id)).or_insert(0u32) += 1;
            }
            self.listed_hashes = Some(Box::new(h));
        }
        if self.listed.len() > cfg.max_events {
            if let Some(last) = self.listed.pop() {
                let id = self.listed_id_str(&last).to_owned();
                if let Some(h) = &mut self.listed_hashes {
                    if let Some(c) = h.get_mut(&id_hash(&id)) {
                        *c -= 1;
                        if *c == 0 {
                            h.remove(&id_hash(&id));
                        }
                    }
                }
                self.garbage += last.id_len as usize + (last.body_len + last.tail_len) as usize;
                let u = Unlisted {
                    ts: last.ts,
                    revenue: last.revenue,
                    attrs: last.attrs,
                    exps: last.exps,
                };
                self.unlist(&id, u);
            }
        }
        if self.garbage > 4096 && self.garbage * 2 > self.arena.len() {
            self.rebuild_tails();
        }
    }

    fn unlist(&mut self, id: &str, u: Unlisted) {
        self.unlisted.get_or_insert_with(Default::default).insert(id.into(), u);
    }

    /// Rewrites the arena in list order with fresh attribute tails (after a session attribute
    /// changed value, or to drop evicted bytes).
    fn rebuild_tails(&mut self) {
        let mut arena = String::with_capacity(self.arena.len() - self.garbage + 64);
        let mut listed = std::mem::take(&mut self.listed);
        for l in &mut listed {
            let start = l.off as usize;
            let keep = l.id_len as usize + l.body_len as usize;
            let off = arena.len();
            arena.push_str(self.piece(start, keep));
            let before = arena.len();
            self.write_tail(l.attrs, &mut arena);
            l.off = off as u32;
            l.tail_len = (arena.len() - before) as u32;
        }
        self.listed = listed;
        self.arena = arena;
        self.garbage = 0;
    }

    /// Moves every accepted event of `other` into `self` (a gap-session merge). Returns the
    /// number of `other`'s events dropped because `self` already had their id; every figure
    /// is then recomputed over the events actually kept, so a dropped copy that differed from
    /// the kept one leaves no trace.
    pub fn absorb(&mut self, other: Session, cfg: &SessionConfig) -> u64 {
        let mut dropped = 0u64;
        // Gap sessions of one pair share visitor and project, so only the order key can move.
        self.offer_first(other.first_ts, &other.first_id, &other.visitor_id, other.project_id);
        // `other`'s sets, read in place (interning copies a set only when it is new here).
        let set = |i: u32| (i != NO_ATTRS).then(|| other.attr_sets.get(i));
        let xset = |i: u32| (i != NO_ATTRS).then(|| other.exp_sets.get(i));
        let mut tail = String::new();
        for l in &other.listed {
            let id = other.listed_id_str(l);
            if self.has_event(id) {
                dropped += 1;
                continue;
            }
            let s = l.off as usize + l.id_len as usize;
            let body = other.piece(s, l.body_len as usize);
            let attrs = self.intern_attrs(set(l.attrs));
            let exps = xset(l.exps);
            let inc = Incoming {
                ts: l.ts,
                id,
                revenue: l.revenue,
                body,
                attrs,
                exps,
            };
            self.list(inc, cfg, &mut tail);
        }
        for (id, u) in other.unlisted.iter().flat_map(|u| u.iter()) {
            if self.has_event(id) {
                dropped += 1;
                continue;
            }
            let attrs = self.intern_attrs(set(u.attrs));
            let exps = self.intern_exps(xset(u.exps));
            self.unlist(
                id,
                Unlisted {
                    ts: u.ts,
                    revenue: u.revenue,
                    attrs,
                    exps,
                },
            );
        }
        self.recompute();
        dropped
    }

    /// Recomputes every aggregate from the accepted events (listed and past the cap).
    fn recompute(&mut self) {
        struct Ev<'a> {
            ts: i64,
            id: &'a str,
            revenue: i64,
            attrs: u32,
            exps: u32,
        }
        let mut events: Vec<Ev<'_>> = self
            .listed
            .iter()
            .map(|l| Ev {
                ts: l.ts,
                id: self.listed_id_str(l),
                revenue: l.revenue,
                attrs: l.attrs,
                exps: l.exps,
            })
            .collect();
        for (id, u) in self.unlisted.iter().flat_map(|u| u.iter()) {
            events.push(Ev {
                ts: u.ts,
                id,
                revenue: u.revenue,
                attrs: u.attrs,
                exps: u.exps,
            });
        }
        events.sort_unstable_by(|a, b| (a.ts, a.id).cmp(&(b.ts, b.id)));
        let mut attrs: Vec<SessionAttr> = Vec::new();
        let mut origins: Vec<(i64, CompactString)> = Vec::new();
        let mut experiments: Vec<(u64, u64)> = Vec::new();
        let sets = &self.attr_sets;
        for e in &events {
            // In (timestamp, event_id) order, the first event with a key gives its value.
            let mut origin = None;
            for (pos, (k, _)) in (e.attrs != NO_ATTRS)
                .then(|| sets.get(e.attrs))
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Err(at) = attrs.binary_search_by(|a| self.attr(a).0.as_str().cmp(k.as_str())) {
                    let origin = *origin.get_or_insert_with(|| {
                        origins.push((e.ts, e.id.into()));
                        (origins.len() - 1) as u32
                    });
                    let a = SessionAttr {
                        origin,
                        set: e.attrs,
                        pos: pos as u16,
                    };
                    attrs.insert(at, a);
                }
            }
            if e.exps != NO_ATTRS {
                experiments.extend_from_slice(self.exp_sets.get(e.exps));
            }
        }
        experiments.sort_unstable();
        experiments.dedup();
        let span = events
            .first()
            .map(|f| (f.ts, events.iter().map(|e| e.ts).max().unwrap_or(f.ts)));
        let count = events.len() as u64;
        let revenue = events.iter().map(|e| e.revenue as i128).sum();
        drop(events);
        if let Some((start, end)) = span {
            self.start = start;
            self.end = end;
        }
        self.event_count = count;
        self.revenue = revenue;
        self.attrs = attrs;
        self.origins = origins;
        self.experiments = experiments;
        self.rebuild_tails();
    }

    /// Builds the snapshot at window `m`.
    pub fn snapshot(&self, gap_based: bool, m: u64, closed: bool, merged_into: Option<&str>) -> Snapshot {
        // Written into a buffer kept from snapshot to snapshot, then copied into a string of its
        // exact size: no walk over the attributes beforehand to size it, no slack in the
        // snapshots a sink holds until its window is written.
        let out = with_scratch(&SNAPSHOT_SCRATCH, |buf| {
            buf.clear();
            self.write_json(buf, m, closed, merged_into);
            String::from(buf.as_str())
        });
        Snapshot {
            session_id: CompactString::from(&*self.id),
            gap_based,
            project_id: self.project_id,
            visitor_id: self.visitor_id.clone(),
            start: self.start,
            end: self.end,
            event_count: self.event_count,
            revenue: self.revenue,
            experiments: self.experiments.clone(),
            window: m,
            closed,
            opened_window: self.opened,
            opened_project: self.opened_project,
            merged_into: merged_into.map(str::to_string),
            state: None,
            json: out,
        }
    }

    /// Writes the spec's snapshot JSON object.
    pub fn write_json<O: JsonOut + ?Sized>(&self, out: &mut O, m: u64, closed: bool, merged_into: Option<&str>) {
        // Quotes around strings are part of the literal text around them.
        out.put("{\"session_id\":\"");
        json::write_str_content(out, &self.id);
        out.put("\",\"project_id\":");
        json::write_int(out, self.project_id);
        out.put(",\"visitor_id\":\"");
        json::write_str_content(out, &self.visitor_id);
        out.put("\",\"start\":");
        json::write_int(out, self.start);
        out.put(",\"end\":");
        json::write_int(out, self.end);
        out.put(",\"event_count\":");
        json::write_int(out, self.event_count);
        out.put(",\"revenue\":");
        json::write_int(out, self.revenue);
        out.put(",\"attributes\":{");
        for (i, a) in self.attrs.iter().enumerate() {
            out.put(if i > 0 { ",\"" } else { "\"" });
            let (k, v) = self.attr(a);
            json::write_attr_member(out, k, v);
        }
        out.put("},\"experiments\":[");
        for (i, (x, v)) in self.experiments.iter().enumerate() {
            if i > 0 {
                out.put_ascii(b',');
            }
            out.put_ascii(b'[');
            json::write_int(out, *x);
            out.put_ascii(b',');
            json::write_int(out, *v);
            out.put_ascii(b']');
        }
        out.put("],\"events\":[");
        for (i, l) in self.listed.iter().enumerate() {
            if i > 0 {
                out.put_ascii(b',');
            }
            let s = l.off as usize + l.id_len as usize;
            out.put(self.piece(s, (l.body_len + l.tail_len) as usize));
        }
        out.put("],\"truncated\":");
        let truncated = self.event_count > self.listed.len() as u64;
        out.put(if truncated { "true" } else { "false" });
        out.put(",\"window\":");
        json::write_int(out, m);
        out.put(",\"closed\":");
        out.put(if closed { "true" } else { "false" });
        if let Some(s) = merged_into {
            out.put(",\"merged_into\":");
            json::write_str(out, s);
        }
        out.put_ascii(b'}');
    }

    /// The session's whole state as bytes: everything exact resumption needs (listed events,
    /// every accepted id past the cap with its revenue, attribute provenance).
    pub fn to_state(&self) -> Vec<u8> {
        // Serializing plain owned data into a Vec cannot fail.
        bincode::serialize(self).unwrap_or_default()
    }

    /// Rebuilds a session from [`Session::to_state`] bytes.
    pub fn from_state(bytes: &[u8]) -> Result<Session, String> {
        let mut s: Session = bincode::deserialize(bytes).map_err(|e| format!("bad session state: {e}"))?;
        s.close_at = u64::MAX;
        s.touched = 0;
        s.indexed_at = u64::MAX;
        Ok(s)
    }

    /// Project of the first event.
    pub fn project_id(&self) -> u64 {
        self.project_id
    }

    /// Visitor of the first event.
    pub fn visitor_id(&self) -> &str {
        &self.visitor_id
    }

    /// Prefetches the heads of the buffers that accepting events and writing a snapshot read
    /// (see [`crate::prefetch`]): the arena and the event list (up to 2 KiB and 1 KiB: a
    /// snapshot then streams on, which the processor's own prefetcher follows), the attribute
    /// references, the origins and up to four attribute sets. It reads the session's own
    /// fields, so the struct itself should have been prefetched a step earlier.
    pub(crate) fn prefetch_buffers(&self) {
        prefetch(self.arena.as_bytes(), 2048);
        prefetch(self.listed.as_slice(), 1024);
        prefetch(self.attrs.as_slice(), 64);
        prefetch(self.origins.as_slice(), 64);
        prefetch(self.attr_sets.sets.as_slice(), 256);
        for set in self.attr_sets.sets.iter().take(4) {
            prefetch(set.as_slice(), 640);
        }
    }

    /// Approximate heap bytes held by this session (for memory reporting).
    pub fn heap_bytes(&self) -> usize {
        let attrs = self.attrs.capacity() * std::mem::size_of::<SessionAttr>() + self.origins.capacity() * 32;
        let sets: usize = self.attr_sets.sets.iter().map(|s| 24 + s.capacity() * 48).sum();
        self.arena.capacity()
            + self.listed.capacity() * std::mem::size_of::<Listed>()
            + attrs
            + sets
            + self.experiments.capacity() * 16
            + self.id.len()
            + self.visitor_id.len()
            + self.first_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Experiment;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn ev(id: &str, ts: i64) -> Event {
        Event::minimal(id, Some("s1"), "v1", 7, ts)
    }

    fn attrs(kv: &[(&str, &str)]) -> Option<Vec<(CompactString, AttrValue)>> {
        Some(
            kv.iter()
                .map(|(k, v)| ((*k).into(), AttrValue::Str((*v).into())))
                .collect(),
        )
    }

    fn snap_value(s: &Session, m: u64, closed: bool) -> Value {
        let mut out = Vec::new();
        s.write_json(&mut out, m, closed, None);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn max_events_is_checked_against_its_limit() {
        assert_eq!(SessionConfig::default().validate(), Ok(()));
        let at = SessionConfig {
            max_events: MAX_EVENTS_LIMIT,
            ..SessionConfig::default()
        };
        assert_eq!(at.validate(), Ok(()));
        let over = SessionConfig {
            max_events: MAX_EVENTS_LIMIT + 1,
            ..SessionConfig::default()
        };
        let e = over.validate().unwrap_err();
        assert!(e.contains("max-events is 10001, at most 10000"), "{e}");
        assert!(SessionConfig {
            window_ms: 0,
            ..SessionConfig::default()
        }
        .validate()
        .is_err());
    }

    /// The bound behind [`MAX_EVENTS_LIMIT`]: a listed event takes no more arena bytes than
    /// twice its input line, escapes and numbers included.
    #[test]
    fn a_listed_event_takes_at_most_twice_its_line_in_the_arena() {
        // Every escape form (each decodes to fewer bytes than it takes, and is re-written at
        // most at its length), in the name, a field, attributes and tags.
        let escapes = r#"\"\\\/\b\f\n\r\t\u0001\u00e9\ud83d\ude00x"#;
        let value = escapes.repeat(19_000 / escapes.len());
        let short = escapes.repeat(4);
        let mut attributes = String::new();
        for i in 0..100 {
            attributes.push_str(&format!(r#""k{i}":"{short}","#));
        }
        attributes.push_str(r#""n":1e2,"f":-0.000001,"b":true"#);
        let line = format!(
            r#"{{"event_id":"e\u0031","session_id":"s","visitor_id":"v","project_id":7,"timestamp":1700000000000,"type":"x","name":"{value}","revenue":-9223372036854775808,"value":1e300,"attributes":{{{attributes}}},"tags":{{"t":"{value}"}}}}"#
        );
        assert!(line.len() <= crate::event::MAX_LINE_BYTES, "{}", line.len());
        let e = crate::event::parse_event(line.as_bytes()).unwrap();
        let mut s = Session::open("s", &e, 0);
        s.accept(&e, &SessionConfig::default());
        assert_eq!(s.listed.len(), 1);
        assert!(
            s.arena.len() <= 2 * line.len() + 255,
            "{} for a line of {}",
            s.arena.len(),
            line.len()
        );
    }

    #[test]
    fn the_spec_example() {
        let cfg = SessionConfig::default();
        let mut e1 = ev("e1", 1_700_000_000_000);
        e1.attributes = attrs(&[("browser", "chrome"), ("country", "US")]);
        e1.experiments = Some(vec![Experiment {
            experiment_id: 11,
            variation_id: 2,
        }]);
        let mut e2 = ev("e2", 1_700_000_060_000);
        e2.kind = "click".into();
        e2.name = Some("add_to_cart".into());
        e2.revenue = Some(1299);
        e2.tags = Some(vec![("sku".into(), "A1".into())]);
        e2.attributes = attrs(&[("browser", "chrome"), ("country", "CA")]);
        e2.experiments = Some(vec![Experiment {
            experiment_id: 12,
            variation_id: 1,
        }]);
        let mut s = Session::open("s1", &e1, 0);
        s.accept(&e1, &cfg);
        s.accept(&e2, &cfg);
        let got = snap_value(&s, 28_333_334, false);
        let want = json!({"session_id":"s1","project_id":7,"visitor_id":"v1","start":1700000000000i64,
            "end":1700000060000i64,"event_count":2,"revenue":1299,
            "attributes":{"browser":"chrome","country":"US"},"experiments":[[11,2],[12,1]],
            "events":[{"event_id":"e1","timestamp":1700000000000i64,"type":"pageview",
                       "experiments":[{"experiment_id":11,"variation_id":2}]},
                      {"event_id":"e2","timestamp":1700000060000i64,"type":"click","name":"add_to_cart",
                       "revenue":1299,"tags":{"sku":"A1"},"experiments":[{"experiment_id":12,"variation_id":1}],
                       "attributes":{"country":"CA"}}],
            "truncated":false,"window":28333334,"closed":false});
        assert_eq!(got, want);
    }

    #[test]
    fn an_earlier_event_changes_attributes_and_first_event() {
        let cfg = SessionConfig::default();
        let mut late = ev("a", 100);
        late.attributes = attrs(&[("country", "FR")]);
        late.visitor_id = "v0".into();
        let mut e = ev("b", 200);
        e.attributes = attrs(&[("country", "US")]);
        let mut s = Session::open("s1", &e, 0);
        s.accept(&e, &cfg);
        assert_eq!(snap_value(&s, 1, false)["events"][0].get("attributes"), None);
        s.accept(&late, &cfg);
        let v = snap_value(&s, 2, false);
        assert_eq!(v["attributes"], json!({"country":"FR"}));
        assert_eq!(v["visitor_id"], "v0");
        assert_eq!(v["events"][0]["event_id"], "a");
        assert_eq!(v["events"][0].get("attributes"), None);
        assert_eq!(v["events"][1]["attributes"], json!({"country":"US"}));
        assert_eq!(v["start"], 100);
    }

    #[test]
    fn ever_earlier_events_take_the_attributes_and_leave_no_stale_ids() {
        let cfg = SessionConfig {
            max_events: 50,
            ..SessionConfig::default()
        };
        let mut s = Session::open("s1", &ev("e999", 10_000), 0);
        for i in (0..1000).rev() {
            // Every event is earlier than all before it, so it takes every key it has.
            let mut e = ev(&format!("e{i:03}"), 10 * i);
            let odd = if i % 2 == 1 { "odd" } else { "even" };
            e.attributes = attrs(&[
                ("browser", &format!("b{}", i % 7)),
                ("parity", odd),
                ("seq", &i.to_string()),
            ]);
            s.accept(&e, &cfg);
            assert!(
                s.origins.len() <= 2 * s.attrs.len().max(4),
                "{} ids kept",
                s.origins.len()
            );
        }
        let v = snap_value(&s, 1, false);
        assert_eq!(v["attributes"], json!({"browser":"b0","parity":"even","seq":"0"}));
        assert_eq!(v["events"][0].get("attributes"), None);
        assert_eq!(
            v["events"][1]["attributes"],
            json!({"browser":"b1","parity":"odd","seq":"1"})
        );
        assert_eq!(s.origins.iter().filter(|(_, id)| id.as_str() == "e000").count(), 1);
        let back = Session::from_state(&s.to_state()).unwrap();
        assert_eq!(snap_value(&back, 1, false), v);
    }

    /// A bot session with a counter attribute: every event has a map of its own. Set indexes
    /// were `u16` and wrapped past 65,535 maps (and interning scanned every set: 40 s for
    /// these 70K events).
    #[test]
    fn a_session_with_more_distinct_attribute_maps_than_a_u16_counts_stays_exact() {
        let cfg = SessionConfig {
            max_events: 5,
            ..SessionConfig::default()
        };
        let n = 70_000;
        let mut s = Session::open("s1", &ev("e0", 1000), 0);
        for i in 0..n {
            let mut e = ev(&format!("e{i}"), 1000 + i);
            e.attributes = attrs(&[("n", &i.to_string())]);
            s.accept(&e, &cfg);
        }
        assert_eq!(s.attr_sets.sets.len(), n as usize);
        // Restored from its state, the set index is rebuilt: a known map is not stored again.
        let mut s = Session::from_state(&s.to_state()).unwrap();
        let mut again = ev("again", 5000);
        again.attributes = attrs(&[("n", "4")]);
        s.accept(&again, &cfg);
        assert_eq!(s.attr_sets.sets.len(), n as usize);
        // The earliest event arrives last with a map of its own: it takes the attribute and
        // heads the list with no attribute tail.
        let mut first = ev("first", 1);
        first.attributes = attrs(&[("n", "first")]);
        s.accept(&first, &cfg);
        let v = snap_value(&s, 1, false);
        assert_eq!(v["attributes"], json!({"n":"first"}));
        assert_eq!(v["event_count"], n + 2);
        assert_eq!(v["events"][0]["event_id"], "first");
        assert_eq!(v["events"][0].get("attributes"), None);
        assert_eq!(v["events"][1]["attributes"], json!({"n":"0"}));
        assert_eq!(v["events"][4]["attributes"], json!({"n":"3"}));
    }

    #[test]
    fn truncation_keeps_the_first_events_and_exact_counters() {
        let cfg = SessionConfig {
            max_events: 2,
            ..SessionConfig::default()
        };
        let mut s = Session::open("s1", &ev("e5", 500), 0);
        for (id, ts, rev) in [
            ("e5", 500, 1),
            ("e3", 300, 10),
            ("e4", 400, 100),
            ("e1", 100, 1000),
            ("e2", 200, 10000),
        ] {
            let mut e = ev(id, ts);
            e.revenue = Some(rev);
            assert!(!s.has_event(id));
            s.accept(&e, &cfg);
            assert!(s.has_event(id));
        }
        let v = snap_value(&s, 1, true);
        assert_eq!(v["event_count"], 5);
        assert_eq!(v["revenue"], 11111);
        assert_eq!(v["truncated"], true);
        let ids: Vec<&str> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["e1", "e2"]);
    }

    #[test]
    fn absorb_drops_copies_the_survivor_has() {
        let cfg = SessionConfig {
            max_events: 2,
            ..SessionConfig::default()
        };
        let mut a = Session::open("v@1", &ev("x", 1), 0);
        let mut b = Session::open("v@5", &ev("y", 5), 0);
        for (id, ts, rev) in [("x", 1, 1), ("dup", 3, 10)] {
            let mut e = ev(id, ts);
            e.revenue = Some(rev);
            a.accept(&e, &cfg);
        }
        for (id, ts, rev) in [("y", 5, 100), ("dup", 3, 10), ("z", 9, 1000)] {
            let mut e = ev(id, ts);
            e.revenue = Some(rev);
            b.accept(&e, &cfg);
        }
        let dropped = a.absorb(b, &cfg);
        assert_eq!(dropped, 1);
        let v = snap_value(&a, 1, false);
        assert_eq!(v["event_count"], 4);
        assert_eq!(v["revenue"], 1111);
        assert_eq!((v["start"].as_i64(), v["end"].as_i64()), (Some(1), Some(9)));
        assert!(a.has_event("z") && a.has_event("y"));
    }

    #[test]
    fn state_round_trips() {
        let cfg = SessionConfig {
            max_events: 3,
            ..SessionConfig::default()
        };
        let mut s = Session::open("s1", &ev("a", 10), 4);
        for i in 0..6 {
            let mut e = ev(&format!("e{i}"), 10 + i);
            e.attributes = attrs(&[("k", if i % 2 == 0 { "x" } else { "y" })]);
            s.accept(&e, &cfg);
        }
        let back = Session::from_state(&s.to_state()).unwrap();
        assert_eq!(snap_value(&back, 9, false), snap_value(&s, 9, false));
        assert!(back.has_event("e5") && !back.has_event("nope"));
        assert!(Session::from_state(b"garbage").is_err());
    }

    /// The arena became a `String` (it was a `Vec<u8>`): bincode writes both as a length and
    /// the bytes, so states SessionDB holds from before still restore.
    #[test]
    fn the_string_arena_keeps_the_state_encoding() {
        let text = "{\"event_id\":\"é\"}";
        assert_eq!(
            bincode::serialize(&text.to_string()).unwrap(),
            bincode::serialize(&text.as_bytes().to_vec()).unwrap()
        );
    }

    #[test]
    fn close_window_boundary() {
        let cfg = SessionConfig {
            window_ms: 1000,
            gap_ms: 5000,
            ..SessionConfig::default()
        };
        // end + gap < (m + 1) * W: end 2000 -> 7000 < (m+1)*1000 -> m = 7.
        assert_eq!(cfg.close_window(2000, 0), 7);
        assert_eq!(cfg.close_window(2999, 0), 7);
        assert_eq!(cfg.close_window(2000, 9), 9);
        assert_eq!(cfg.closed_windows(), 5);
        assert_eq!(SessionConfig { gap_ms: 5001, ..cfg }.closed_windows(), 6);
    }

    /// A plain model of the snapshot over a set of accepted events (ids unique).
    fn model(events: &[Event], max: usize) -> Value {
        let mut sorted: Vec<&Event> = events.iter().collect();
        sorted.sort_by(|a, b| (a.timestamp, &a.event_id).cmp(&(b.timestamp, &b.event_id)));
        let mut session_attrs = serde_json::Map::new();
        for e in &sorted {
            for (k, v) in e.attributes.iter().flatten() {
                if !session_attrs.contains_key(k.as_str()) {
                    session_attrs.insert(k.to_string(), serde_json::to_value(v).unwrap());
                }
            }
        }
        let listed: Vec<Value> = sorted
            .iter()
            .take(max)
            .map(|e| {
                let mut o = serde_json::Map::new();
                o.insert("event_id".into(), json!(e.event_id));
                o.insert("timestamp".into(), json!(e.timestamp));
                o.insert("type".into(), json!(e.kind));
                if let Some(r) = e.revenue {
                    o.insert("revenue".into(), json!(r));
                }
                let diff: serde_json::Map<String, Value> = e
                    .attributes
                    .iter()
                    .flatten()
                    .filter(|(k, v)| session_attrs.get(k.as_str()) != Some(&serde_json::to_value(v).unwrap()))
                    .map(|(k, v)| (k.to_string(), serde_json::to_value(v).unwrap()))
                    .collect();
                if !diff.is_empty() {
                    o.insert("attributes".into(), Value::Object(diff));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "session_id": "s1", "project_id": sorted[0].project_id, "visitor_id": sorted[0].visitor_id,
            "start": sorted.iter().map(|e| e.timestamp).min(), "end": sorted.iter().map(|e| e.timestamp).max(),
            "event_count": events.len(), "revenue": events.iter().map(|e| e.revenue.unwrap_or(0)).sum::<i64>(),
            "attributes": session_attrs, "experiments": [], "events": listed,
            "truncated": events.len() > max, "window": 1, "closed": false,
        })
    }

    proptest! {
        #[test]
        fn snapshot_matches_a_plain_model(
            raw in proptest::collection::vec((0i64..20, 0u8..4, 0u8..3, proptest::option::of(-50i64..50)), 1..40),
            max in 0usize..6,
        ) {
            let cfg = SessionConfig { max_events: max, ..SessionConfig::default() };
            let mut events = Vec::new();
            for (i, (ts, v1, v2, rev)) in raw.iter().enumerate() {
                let mut e = ev(&format!("e{:02}", (i * 7) % 41), 1_000 + ts);
                e.visitor_id = format!("v{v1}").into();
                e.revenue = *rev;
                let vals = ["a", "b", "c", "d"];
                e.attributes = match v2 { 0 => None, 1 => attrs(&[("k", vals[*v1 as usize])]),
                    _ => attrs(&[("k", vals[(*v1 as usize + 1) % 4]), ("z", "1")]) };
                if !events.iter().any(|x: &Event| x.event_id == e.event_id) {
                    events.push(e);
                }
            }
            let mut s = Session::open("s1", &events[0], 0);
            for e in &events {
                prop_assert!(!s.has_event(&e.event_id));
                s.accept(e, &cfg);
            }
            prop_assert_eq!(snap_value(&s, 1, false), model(&events, max));
            // Splitting the events over two sessions and merging gives the same snapshot.
            let (left, right) = events.split_at(events.len() / 2);
            if !left.is_empty() && !right.is_empty() {
                let mut a = Session::open("s1", &left[0], 0);
                left.iter().for_each(|e| a.accept(e, &cfg));
                let mut b = Session::open("s2", &right[0], 0);
                right.iter().for_each(|e| b.accept(e, &cfg));
                prop_assert_eq!(a.absorb(b, &cfg), 0);
                prop_assert_eq!(snap_value(&a, 1, false), model(&events, max));
            }
        }
    }
}
