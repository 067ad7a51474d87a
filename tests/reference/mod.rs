//! A plain, sequential reference implementation of `/work/shared/spec/sessions.md`, written from
//! the spec text only (not from the engine), plus a seeded generator of nasty replay inputs.
//!
//! Favours obvious correctness over speed: every window is processed in turn, every event is a
//! `serde_json` value, every snapshot is rebuilt from the session's full list of events.
//!
//! Choices made where the spec is silent (each is also marked `CHOICE` below):
//! 1. A line is "zero-length" after its one trailing `\r` is removed (a line `"\r"` is skipped).
//! 2. The 64 KiB limit applies to the line after the `\r` is removed; exactly 65536 bytes is fine.
//! 3. `raw` in a dead letter is the line after the `\r` is removed (lossy UTF-8 if not UTF-8).
//! 4. Duplicate copies: the copy that is *processed* first wins, i.e. windows in increasing
//!    order, then `(timestamp, event_id, partition, offset)` inside a window. A copy in a later
//!    window never replaces an accepted one, even if its timestamp is smaller.
//! 5. `null` inside `attributes` is a value like any other: an event with `"k": null` *has* the
//!    key `k`. Attribute values compare as `serde_json::Value`s.
//! 6. Gap sessions and sessions with an id live in separate key spaces (the generator never
//!    writes a `session_id` containing `@`, so the question does not arise in the tests).
//! 7. A session merged away is *not* put in the closed set: its events live on in the survivor,
//!    whose own range covers them.
//! 8. With several other matches, they are merged into the survivor in `(start, session_id)`
//!    order (this only decides which copy of an `event_id` they share is kept). In fact an
//!    event never matches more than two sessions: at most one gap session per pair is open
//!    at the end of a window, and the events of a window are applied in timestamp order, so
//!    the sessions a window opens lie on one side of it and chain; the generator never
//!    produces a three-way merge.
//! 9. Per-event `tags: {}` and `experiments: []` are present (the input had them); an event's
//!    `attributes` is omitted when its reduced map is empty (including an input `{}`).
//! 10. `truncated` is `event_count > max_events`.
//! 11. Surrounding JSON whitespace around the object (`  {...}  `) is valid JSON, so valid.
//! 12. Not decided here, and never generated: an object with a repeated key (`serde_json`
//!     keeps the last value; the engine says `invalid: duplicate key`), a UTF-8 BOM (invalid
//!     here and in the engine). Numbers are compared as `serde_json::Value`s, so a `value` of
//!     `3` written back as `3.0` would count as a difference.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Lower bound (inclusive) of a valid timestamp.
pub const TS_MIN: i64 = 946_684_800_000;
/// Upper bound (exclusive) of a valid timestamp.
pub const TS_MAX: i64 = 4_102_444_800_000;
/// Longest valid line, in bytes.
pub const MAX_LINE: usize = 65_536;

/// The semantic parameters of a run, in milliseconds / counts.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Window length `W` in ms.
    pub window_ms: i64,
    /// Inactivity gap in ms.
    pub gap_ms: i64,
    /// Out-of-orderness bound `L` in ms.
    pub lateness_ms: i64,
    /// Most events listed per snapshot.
    pub max_events: usize,
}

impl Config {
    /// The replay flags for this config (durations written in ms).
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--window".into(),
            format!("{}ms", self.window_ms),
            "--gap".into(),
            format!("{}ms", self.gap_ms),
            "--lateness".into(),
            format!("{}ms", self.lateness_ms),
            "--max-events".into(),
            self.max_events.to_string(),
        ]
    }

    /// `ceil(gap / W)`: how many windows a key stays in the closed set after its closing window.
    fn closed_windows(&self) -> i64 {
        (self.gap_ms + self.window_ms - 1) / self.window_ms
    }

    /// `w(t) = floor(t / W)`.
    fn w(&self, t: i64) -> i64 {
        t.div_euclid(self.window_ms)
    }
}

/// One dead letter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetter {
    /// Partition index.
    pub partition: usize,
    /// Line index within the file (0-based, empty lines counted).
    pub offset: usize,
    /// `session_closed`, or `invalid...`.
    pub reason: String,
    /// The line.
    pub raw: String,
}

/// The counters of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Non-empty lines read.
    pub events_read: u64,
    /// Accepted events (net of merge duplicates).
    pub accepted: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Dead-lettered as `session_closed`.
    pub late: u64,
    /// Invalid lines.
    pub invalid: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions closed (including merged away).
    pub sessions_closed: u64,
    /// Snapshots emitted.
    pub snapshots: u64,
}

impl Counters {
    /// The counters as the JSON object the stats file should hold.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "events_read": self.events_read,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "late": self.late,
            "invalid": self.invalid,
            "sessions_opened": self.sessions_opened,
            "sessions_closed": self.sessions_closed,
            "snapshots": self.snapshots,
        })
    }
}

/// Everything a replay produces.
#[derive(Clone, Debug)]
pub struct Output {
    /// Snapshots, sorted by `(window, session_id, project_id as text, canonical text)`.
    pub snapshots: Vec<Value>,
    /// Dead letters sorted by `(partition, offset)`.
    pub dead_letters: Vec<DeadLetter>,
    /// Counters.
    pub counters: Counters,
    /// How often interesting situations happened (for the generator's coverage test only).
    pub notes: BTreeMap<&'static str, u64>,
}

/// A valid event, with where it came from.
#[derive(Clone, Debug)]
struct Event {
    event_id: String,
    session_id: Option<String>,
    visitor_id: String,
    project_id: u64,
    timestamp: i64,
    kind: String,
    name: Option<String>,
    revenue: Option<i64>,
    value: Option<Value>,
    attributes: Option<Map<String, Value>>,
    tags: Option<Map<String, Value>>,
    experiments: Option<Vec<(u64, u64)>>,
    partition: usize,
    offset: usize,
    raw: String,
}

impl Event {
    /// Everything but where the event came from.
    fn content(&self) -> String {
        let mut e = self.clone();
        (e.partition, e.offset, e.raw) = (0, 0, String::new());
        format!("{e:?}")
    }
}

/// Takes an optional field: absent and `null` are both `None`.
fn optional<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

fn string_field(obj: &Map<String, Value>, key: &str, max_bytes: usize) -> Result<String, String> {
    match optional(obj, key) {
        None => Err(format!("invalid: missing {key}")),
        Some(Value::String(s)) => {
            if s.is_empty() || s.len() > max_bytes {
                Err(format!("invalid: {key} length"))
            } else {
                Ok(s.clone())
            }
        }
        Some(_) => Err(format!("invalid: {key} type")),
    }
}

/// A JSON integer in u64 (`1.0`, `-1` and `1e2` are not).
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) if !n.is_f64() => n.as_u64(),
        _ => None,
    }
}

/// A JSON integer in i64.
fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) if !n.is_f64() => n.as_i64(),
        _ => None,
    }
}

/// Validates one line (after `\r` removal, non-empty).
fn validate(line: &[u8], partition: usize, offset: usize) -> Result<Event, String> {
    if line.len() > MAX_LINE {
        return Err("invalid: line too long".into());
    }
    let text = std::str::from_utf8(line).map_err(|_| "invalid: utf-8".to_string())?;
    // serde_json rejects NaN/Infinity (not JSON) and numbers that overflow f64 (1e400).
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid: json: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("invalid: not an object".into());
    };
    let event_id = string_field(&obj, "event_id", 128)?;
    let session_id = match optional(&obj, "session_id") {
        None => None,
        Some(_) => Some(string_field(&obj, "session_id", 128)?),
    };
    let visitor_id = string_field(&obj, "visitor_id", 128)?;
    let project_id = match optional(&obj, "project_id") {
        None => return Err("invalid: missing project_id".into()),
        Some(v) => as_u64(v).ok_or("invalid: project_id")?,
    };
    let timestamp = match optional(&obj, "timestamp") {
        None => return Err("invalid: missing timestamp".into()),
        Some(v) => as_i64(v).ok_or("invalid: timestamp")?,
    };
    if !(TS_MIN..TS_MAX).contains(&timestamp) {
        return Err("invalid: timestamp out of range".into());
    }
    let kind = string_field(&obj, "type", 64)?;
    let name = match optional(&obj, "name") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("invalid: name".into()),
    };
    let revenue = match optional(&obj, "revenue") {
        None => None,
        Some(v) => Some(as_i64(v).ok_or("invalid: revenue")?),
    };
    let value = match optional(&obj, "value") {
        None => None,
        Some(v @ Value::Number(_)) => Some(v.clone()),
        Some(_) => return Err("invalid: value".into()),
    };
    let attributes = match optional(&obj, "attributes") {
        None => None,
        Some(Value::Object(m)) => {
            for v in m.values() {
                match v {
                    Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => {}
                    _ => return Err("invalid: attribute value".into()),
                }
            }
            Some(m.clone())
        }
        Some(_) => return Err("invalid: attributes".into()),
    };
    let tags = match optional(&obj, "tags") {
        None => None,
        Some(Value::Object(m)) => {
            if m.values().any(|v| !v.is_string()) {
                return Err("invalid: tag value".into());
            }
            Some(m.clone())
        }
        Some(_) => return Err("invalid: tags".into()),
    };
    let experiments = match optional(&obj, "experiments") {
        None => None,
        Some(Value::Array(items)) => {
            let mut pairs = Vec::new();
            for item in items {
                let Value::Object(o) = item else {
                    return Err("invalid: experiment".into());
                };
                let e = o.get("experiment_id").and_then(as_u64);
                let v = o.get("variation_id").and_then(as_u64);
                match (e, v) {
                    (Some(e), Some(v)) => pairs.push((e, v)),
                    _ => return Err("invalid: experiment".into()),
                }
            }
            Some(pairs)
        }
        Some(_) => return Err("invalid: experiments".into()),
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
        partition,
        offset,
        raw: text.to_string(),
    })
}

/// Where a session lives: by `session_id`, or a gap session of `(project_id, visitor_id)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Id(String),
    Pair(u64, String),
}

#[derive(Clone, Debug)]
struct Session {
    id: String,
    key: Key,
    /// Accepted events, in the order accepted.
    events: Vec<Event>,
    /// Accepted at least one event in the current window.
    touched: bool,
}

impl Session {
    fn start(&self) -> i64 {
        self.events.iter().map(|e| e.timestamp).min().unwrap_or(i64::MAX)
    }
    fn end(&self) -> i64 {
        self.events.iter().map(|e| e.timestamp).max().unwrap_or(i64::MIN)
    }
    fn has(&self, event_id: &str) -> bool {
        self.events.iter().any(|e| e.event_id == event_id)
    }
    /// `start - gap <= t <= end + gap`.
    fn matches(&self, t: i64, gap: i64) -> bool {
        self.start() - gap <= t && t <= self.end() + gap
    }
}

/// A closed gap session, remembered for the closed-set rule.
#[derive(Clone, Debug)]
struct ClosedGap {
    pair: (u64, String),
    start: i64,
    end: i64,
    window: i64,
}

/// Builds the snapshot of `s` at window `m`.
fn snapshot(s: &Session, m: i64, closed: bool, merged_into: Option<&str>, cfg: &Config) -> Value {
    let mut events: Vec<&Event> = s.events.iter().collect();
    events.sort_by(|a, b| (a.timestamp, &a.event_id).cmp(&(b.timestamp, &b.event_id)));
    let first = events[0];
    let mut attributes: BTreeMap<String, Value> = BTreeMap::new();
    let mut experiments: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut revenue: i64 = 0;
    for e in &events {
        if let Some(attrs) = &e.attributes {
            for (k, v) in attrs {
                attributes.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if let Some(exps) = &e.experiments {
            experiments.extend(exps.iter().copied());
        }
        revenue += e.revenue.unwrap_or(0);
    }
    let mut listed = Vec::new();
    for e in events.iter().take(cfg.max_events) {
        let mut o = Map::new();
        o.insert("event_id".into(), Value::from(e.event_id.clone()));
        o.insert("timestamp".into(), Value::from(e.timestamp));
        o.insert("type".into(), Value::from(e.kind.clone()));
        if let Some(n) = &e.name {
            o.insert("name".into(), Value::from(n.clone()));
        }
        if let Some(r) = e.revenue {
            o.insert("revenue".into(), Value::from(r));
        }
        if let Some(v) = &e.value {
            o.insert("value".into(), v.clone());
        }
        if let Some(t) = &e.tags {
            o.insert("tags".into(), Value::Object(t.clone()));
        }
        if let Some(x) = &e.experiments {
            let arr = x
                .iter()
                .map(|(a, b)| serde_json::json!({"experiment_id": a, "variation_id": b}))
                .collect();
            o.insert("experiments".into(), Value::Array(arr));
        }
        if let Some(attrs) = &e.attributes {
            let mut own = Map::new();
            for (k, v) in attrs {
                if attributes.get(k) != Some(v) {
                    own.insert(k.clone(), v.clone());
                }
            }
            if !own.is_empty() {
                o.insert("attributes".into(), Value::Object(own));
            }
        }
        listed.push(Value::Object(o));
    }
    let mut o = Map::new();
    o.insert("session_id".into(), Value::from(s.id.clone()));
    o.insert("project_id".into(), Value::from(first.project_id));
    o.insert("visitor_id".into(), Value::from(first.visitor_id.clone()));
    o.insert("start".into(), Value::from(s.start()));
    o.insert("end".into(), Value::from(s.end()));
    o.insert("event_count".into(), Value::from(events.len()));
    o.insert("revenue".into(), Value::from(revenue));
    o.insert("attributes".into(), Value::Object(attributes.into_iter().collect()));
    let exps = experiments
        .into_iter()
        .map(|(a, b)| serde_json::json!([a, b]))
        .collect();
    o.insert("experiments".into(), Value::Array(exps));
    o.insert("events".into(), Value::Array(listed));
    o.insert("truncated".into(), Value::from(events.len() > cfg.max_events));
    o.insert("window".into(), Value::from(m));
    o.insert("closed".into(), Value::from(closed));
    if let Some(into) = merged_into {
        o.insert("merged_into".into(), Value::from(into));
    }
    Value::Object(o)
}

/// The sort key of a snapshot: `(window, session_id, project_id as text, canonical text)`.
///
/// Ties on `(window, session_id)` are by the line's bytes; the engine's lines start with
/// `{"session_id":..,"project_id":N`, so the first difference is the decimal text of
/// `project_id`. The canonical text is a last resort that never decides in practice.
pub fn snapshot_sort_key(v: &Value) -> (i64, Vec<u8>, Vec<u8>, String) {
    (
        v["window"].as_i64().unwrap_or(i64::MIN),
        v["session_id"].as_str().unwrap_or("").as_bytes().to_vec(),
        v["project_id"].to_string().into_bytes(),
        v.to_string(),
    )
}

/// Splits a file into lines as the spec says: `(offset, line without its trailing \r)`,
/// zero-length lines skipped (CHOICE 1: zero-length after the `\r` is removed).
pub fn split_lines(bytes: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    for (offset, piece) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = piece.strip_suffix(b"\r").unwrap_or(piece);
        if !line.is_empty() {
            out.push((offset, line.to_vec()));
        }
    }
    out
}

/// Runs the reference on the given partition files' contents.
pub fn run(partitions: &[Vec<u8>], cfg: &Config) -> Output {
    let mut counters = Counters::default();
    let mut notes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut note = |what: &'static str| *notes.entry(what).or_default() += 1;
    let mut dead_letters = Vec::new();
    // window -> events assigned to it
    let mut assigned: BTreeMap<i64, Vec<Event>> = BTreeMap::new();

    for (p, bytes) in partitions.iter().enumerate() {
        let mut max_ts: Option<i64> = None;
        for (offset, line) in split_lines(bytes) {
            counters.events_read += 1;
            match validate(&line, p, offset) {
                Err(reason) => {
                    counters.invalid += 1;
                    dead_letters.push(DeadLetter {
                        partition: p,
                        offset,
                        reason,
                        raw: String::from_utf8_lossy(&line).into_owned(),
                    });
                }
                Ok(event) => {
                    let t = event.timestamp;
                    let max = max_ts.map_or(t, |m| m.max(t));
                    max_ts = Some(max);
                    let wm = max - cfg.lateness_ms;
                    let a = cfg.w(t).max(cfg.w(wm));
                    if a > cfg.w(t) {
                        note("late assignment");
                    }
                    assigned.entry(a).or_default().push(event);
                }
            }
        }
    }

    let mut snapshots: Vec<Value> = Vec::new();
    let mut open: Vec<Session> = Vec::new();
    // session_id -> window it closed in (id sessions)
    let mut closed_ids: BTreeMap<String, i64> = BTreeMap::new();
    let mut closed_gaps: Vec<ClosedGap> = Vec::new();
    let k = cfg.closed_windows();
    let gap = cfg.gap_ms;

    let Some(&first_window) = assigned.keys().next() else {
        return finish(snapshots, dead_letters, counters, notes);
    };
    let mut m = first_window;
    loop {
        if open.is_empty() {
            // Nothing open: jump to the next window that has events, or stop.
            match assigned.range(m..).next() {
                None => break,
                Some((&next, _)) => m = next,
            }
        }
        let mut events = assigned.remove(&m).unwrap_or_default();
        events.sort_by(|a, b| {
            (a.timestamp, &a.event_id, a.partition, a.offset).cmp(&(b.timestamp, &b.event_id, b.partition, b.offset))
        });
        for s in open.iter_mut() {
            s.touched = false;
        }

        // Step 1: apply the events.
        for e in events {
            match e.session_id.clone() {
                Some(sid) => {
                    if closed_ids.get(&sid).is_some_and(|&c| m <= c + k) {
                        note("id session_closed");
                        counters.late += 1;
                        dead_letters.push(DeadLetter {
                            partition: e.partition,
                            offset: e.offset,
                            reason: "session_closed".into(),
                            raw: e.raw.clone(),
                        });
                        continue;
                    }
                    let key = Key::Id(sid.clone());
                    match open.iter_mut().find(|s| s.key == key) {
                        Some(s) if s.has(&e.event_id) => counters.duplicates += 1,
                        Some(s) => {
                            counters.accepted += 1;
                            s.events.push(e);
                            s.touched = true;
                        }
                        None => {
                            if closed_ids.contains_key(&sid) {
                                note("id reopened after expiry");
                            }
                            counters.accepted += 1;
                            counters.sessions_opened += 1;
                            open.push(Session {
                                id: sid,
                                key,
                                events: vec![e],
                                touched: true,
                            });
                        }
                    }
                }
                None => {
                    let pair = (e.project_id, e.visitor_id.clone());
                    let key = Key::Pair(pair.0, pair.1.clone());
                    let t = e.timestamp;
                    let matching: Vec<usize> = (0..open.len())
                        .filter(|&i| open[i].key == key && open[i].matches(t, gap))
                        .collect();
                    if !matching.is_empty() {
                        if matching.iter().any(|&i| open[i].has(&e.event_id)) {
                            note("gap duplicate");
                            counters.duplicates += 1;
                            continue;
                        }
                        // Order the matches by (start, session_id): the first survives.
                        let mut order = matching.clone();
                        order.sort_by(|&a, &b| (open[a].start(), &open[a].id).cmp(&(open[b].start(), &open[b].id)));
                        let survivor_id = open[order[0]].id.clone();
                        if order.len() > 2 {
                            note("merge of three or more");
                        }
                        let mut moved: Vec<Event> = Vec::new();
                        for &i in &order[1..] {
                            note("merge");
                            let gone = &open[i];
                            snapshots.push(snapshot(gone, m, true, Some(&survivor_id), cfg));
                            counters.snapshots += 1;
                            counters.sessions_closed += 1;
                            moved.extend(gone.events.iter().cloned());
                        }
                        // Remove merged-away sessions (highest index first).
                        let mut gone_idx: Vec<usize> = order[1..].to_vec();
                        gone_idx.sort_unstable_by(|a, b| b.cmp(a));
                        let survivor_key = (open[order[0]].start(), survivor_id.clone());
                        for i in gone_idx {
                            open.remove(i);
                        }
                        let survivor = open
                            .iter_mut()
                            .find(|s| s.key == key && (s.start(), s.id.clone()) == survivor_key)
                            .expect("survivor");
                        for ev in moved {
                            if survivor.has(&ev.event_id) {
                                note("merge duplicate");
                                let kept = survivor.events.iter().find(|k| k.event_id == ev.event_id);
                                if kept.map(Event::content) != Some(ev.content()) {
                                    note("merge drops a differing copy");
                                }
                                counters.accepted -= 1;
                                counters.duplicates += 1;
                            } else {
                                survivor.events.push(ev);
                            }
                        }
                        counters.accepted += 1;
                        survivor.events.push(e);
                        survivor.touched = true;
                        continue;
                    }
                    let in_closed = closed_gaps
                        .iter()
                        .any(|c| c.pair == pair && m <= c.window + k && c.start - gap <= t && t <= c.end + gap);
                    if in_closed {
                        note("gap session_closed");
                        counters.late += 1;
                        dead_letters.push(DeadLetter {
                            partition: e.partition,
                            offset: e.offset,
                            reason: "session_closed".into(),
                            raw: e.raw.clone(),
                        });
                        continue;
                    }
                    counters.accepted += 1;
                    counters.sessions_opened += 1;
                    let id = format!("{}@{}", e.visitor_id, t);
                    open.push(Session {
                        id,
                        key,
                        events: vec![e],
                        touched: true,
                    });
                }
            }
        }

        // Steps 2 and 3: snapshots, closing.
        let limit = (m + 1) * cfg.window_ms;
        let mut still_open = Vec::new();
        for s in open {
            let closing = s.end() + gap < limit;
            if closing {
                snapshots.push(snapshot(&s, m, true, None, cfg));
                counters.snapshots += 1;
                counters.sessions_closed += 1;
                match &s.key {
                    Key::Id(id) => {
                        closed_ids.insert(id.clone(), m);
                    }
                    Key::Pair(p, v) => closed_gaps.push(ClosedGap {
                        pair: (*p, v.clone()),
                        start: s.start(),
                        end: s.end(),
                        window: m,
                    }),
                }
            } else {
                if s.touched {
                    snapshots.push(snapshot(&s, m, false, None, cfg));
                    counters.snapshots += 1;
                }
                still_open.push(s);
            }
        }
        open = still_open;
        closed_gaps.retain(|c| c.window + k > m);
        m += 1;
    }
    finish(snapshots, dead_letters, counters, notes)
}

fn finish(
    mut snapshots: Vec<Value>,
    mut dead: Vec<DeadLetter>,
    counters: Counters,
    notes: BTreeMap<&'static str, u64>,
) -> Output {
    snapshots.sort_by_key(snapshot_sort_key);
    dead.sort();
    let mut notes = notes;
    for pair in snapshots.windows(2) {
        if pair[0]["window"] == pair[1]["window"] && pair[0]["session_id"] == pair[1]["session_id"] {
            *notes.entry("same session_id twice in a window").or_default() += 1;
        }
    }
    Output {
        snapshots,
        dead_letters: dead,
        counters,
        notes,
    }
}

/// A seeded generator of small but nasty replay inputs.
pub mod gen {
    use rand::seq::IndexedRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::Config;

    /// A generated case.
    #[derive(Clone, Debug)]
    pub struct Case {
        /// The seed.
        pub seed: u64,
        /// Semantic flags.
        pub cfg: Config,
        /// Contents of each partition file.
        pub partitions: Vec<Vec<u8>>,
    }

    /// An event as an ordered list of `(key, raw JSON text)`.
    type Fields = Vec<(String, String)>;

    fn js(s: &str) -> String {
        serde_json::to_string(s).unwrap_or_default()
    }

    fn render(fields: &Fields) -> String {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{}", js(k), v)).collect();
        format!("{{{}}}", body.join(","))
    }

    fn set(fields: &mut Fields, key: &str, raw: String) {
        match fields.iter_mut().find(|(k, _)| k == key) {
            Some(f) => f.1 = raw,
            None => fields.push((key.to_string(), raw)),
        }
    }

    fn remove(fields: &mut Fields, key: &str) {
        fields.retain(|(k, _)| k != key);
    }

    struct Gen {
        rng: ChaCha8Rng,
        cfg: Config,
        parts: Vec<Vec<String>>,
        /// Valid events written so far (for duplicates and conflicting copies).
        written: Vec<Fields>,
        /// `(visitor, project)` of the gap events written so far, with their fields.
        gap_events: Vec<(String, String, Fields)>,
        next_id: u32,
    }

    const VISITORS: [&str; 4] = ["v1", "v2", "vé", "V"];
    const SESSIONS: [&str; 5] = ["s1", "s2", "s3", "sé", "S"];
    const TYPES: [&str; 4] = ["pageview", "click", "conversion", "decision"];

    impl Gen {
        fn chance(&mut self, p: f64) -> bool {
            self.rng.random_bool(p)
        }

        fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
            items.choose(&mut self.rng).copied().unwrap_or("x")
        }

        fn fresh_id(&mut self) -> String {
            self.next_id += 1;
            match self.rng.random_range(0..20) {
                0 => format!("é{}", self.next_id),
                1 => format!("E{}", self.next_id),
                _ => format!("e{:03}", self.next_id),
            }
        }

        fn project(&mut self) -> String {
            match self.rng.random_range(0..40) {
                0 => "18446744073709551615".into(),
                1..=10 => "2".into(),
                _ => "1".into(),
            }
        }

        /// A valid event at `ts`; `session`: None = gap session (field absent or null).
        fn event(&mut self, ts: i64, visitor: &str, project: &str, session: Option<&str>) -> Fields {
            let mut f: Fields = Vec::new();
            let id = self.fresh_id();
            f.push(("event_id".into(), js(&id)));
            match session {
                Some(s) => f.push(("session_id".into(), js(s))),
                None => {
                    if self.chance(0.3) {
                        f.push(("session_id".into(), "null".into()));
                    }
                }
            }
            f.push(("visitor_id".into(), js(visitor)));
            f.push(("project_id".into(), project.to_string()));
            f.push(("timestamp".into(), ts.to_string()));
            let kind = self.pick(&TYPES).to_string();
            f.push(("type".into(), js(&kind)));
            let r = self.rng.random_range(0..100);
            if r < 25 {
                let n = self.pick(&["add_to_cart", "checkout", "x"]).to_string();
                f.push(("name".into(), js(&n)));
            } else if r < 33 {
                f.push(("name".into(), "null".into()));
            } else if r < 35 {
                f.push(("name".into(), "\"\"".into()));
            }
            let r = self.rng.random_range(0..100);
            if r < 20 {
                f.push(("revenue".into(), self.rng.random_range(-500..5000).to_string()));
            } else if r < 25 {
                f.push(("revenue".into(), "null".into()));
            }
            let r = self.rng.random_range(0..100);
            if r < 15 {
                let v = self.pick(&["3", "2.5", "-0.125", "0", "12345678901234", "0.1"]);
                f.push(("value".into(), v.to_string()));
            } else if r < 20 {
                f.push(("value".into(), "null".into()));
            }
            let r = self.rng.random_range(0..100);
            if r < 15 {
                let t = self.pick(&[r#"{"sku":"A1"}"#, r#"{"sku":"B2","pos":"top"}"#, "{}"]);
                f.push(("tags".into(), t.to_string()));
            } else if r < 18 {
                f.push(("tags".into(), "null".into()));
            }
            let r = self.rng.random_range(0..100);
            if r < 55 {
                let attrs = self.attributes();
                f.push(("attributes".into(), attrs));
            } else if r < 58 {
                f.push(("attributes".into(), "null".into()));
            }
            let r = self.rng.random_range(0..100);
            if r < 20 {
                let n = self.rng.random_range(0..3);
                let mut items = Vec::new();
                for _ in 0..n {
                    let e = self.rng.random_range(11..14);
                    let v = self.rng.random_range(1..3);
                    items.push(format!(r#"{{"experiment_id":{e},"variation_id":{v}}}"#));
                }
                f.push(("experiments".into(), format!("[{}]", items.join(","))));
            } else if r < 23 {
                f.push(("experiments".into(), "null".into()));
            }
            if self.chance(0.08) {
                f.push(("extra".into(), r#"{"nested":[1,2,{"x":null}]}"#.into()));
            }
            if self.chance(0.2) {
                // Field order must not matter.
                let n = f.len();
                for i in (1..n).rev() {
                    let j = self.rng.random_range(0..=i);
                    f.swap(i, j);
                }
            }
            f
        }

        fn attributes(&mut self) -> String {
            let mut parts = Vec::new();
            if self.chance(0.6) {
                let v = self.pick(&[r#""chrome""#, r#""firefox""#]).to_string();
                parts.push(format!(r#""browser":{v}"#));
            }
            if self.chance(0.5) {
                let v = self.pick(&[r#""US""#, r#""CA""#, "null"]).to_string();
                parts.push(format!(r#""country":{v}"#));
            }
            if self.chance(0.3) {
                let v = self.pick(&["1", "2", "true", r#""m""#, "1.5"]).to_string();
                parts.push(format!(r#""device":{v}"#));
            }
            format!("{{{}}}", parts.join(","))
        }

        fn push(&mut self, line: String) {
            let p = self.rng.random_range(0..self.parts.len());
            self.parts[p].push(line);
        }

        fn push_event(&mut self, fields: Fields) {
            let mut line = render(&fields);
            let r = self.rng.random_range(0..100);
            if r == 0 {
                line = format!("  {line} ");
            }
            self.written.push(fields);
            self.push(line);
        }

        fn invalid(&mut self, ts: i64) -> String {
            let mut base = self.event(ts, "v1", "1", Some("s1"));
            let kind = self.rng.random_range(0..40);
            match kind {
                0 => return r#"{"event_id":"x""#.into(),
                1 => return "[1,2,3]".into(),
                2 => return "\"just a string\"".into(),
                3 => return "   ".into(),
                4 => return "\t".into(),
                5 => set(&mut base, "timestamp", "946684799999".into()),
                6 => set(&mut base, "timestamp", "4102444800000".into()),
                7 => set(&mut base, "project_id", "1.0".into()),
                8 => set(&mut base, "project_id", "-1".into()),
                9 => set(&mut base, "project_id", "\"7\"".into()),
                10 => set(&mut base, "event_id", "\"\"".into()),
                11 => set(&mut base, "event_id", js(&"a".repeat(129))),
                12 => set(&mut base, "event_id", js(&"é".repeat(65))),
                13 => set(&mut base, "type", js(&"t".repeat(65))),
                14 => set(&mut base, "type", "\"\"".into()),
                15 => remove(&mut base, "visitor_id"),
                16 => remove(&mut base, "type"),
                17 => set(&mut base, "timestamp", format!("\"{ts}\"")),
                18 => set(&mut base, "timestamp", format!("{ts}.0")),
                19 => set(&mut base, "revenue", "1.5".into()),
                20 => set(&mut base, "value", "\"x\"".into()),
                21 => set(&mut base, "value", "1e400".into()),
                22 => set(&mut base, "attributes", r#"{"a":{"b":1}}"#.into()),
                23 => set(&mut base, "attributes", r#"{"a":[1]}"#.into()),
                24 => set(&mut base, "tags", r#"{"a":1}"#.into()),
                25 => set(&mut base, "experiments", r#"[{"experiment_id":1}]"#.into()),
                26 => set(
                    &mut base,
                    "experiments",
                    r#"[{"experiment_id":1,"variation_id":-1}]"#.into(),
                ),
                27 => set(&mut base, "attributes", "\"str\"".into()),
                28 => set(&mut base, "session_id", "5".into()),
                29 => set(&mut base, "session_id", "\"\"".into()),
                30 => set(&mut base, "value", "NaN".into()),
                31 => return "null".into(),
                32 => set(&mut base, "visitor_id", "null".into()),
                33 => set(&mut base, "event_id", "null".into()),
                34 => set(&mut base, "timestamp", "null".into()),
                35 => set(&mut base, "project_id", "18446744073709551616".into()),
                36 => set(&mut base, "revenue", "9223372036854775808".into()),
                37 => return "{}".into(),
                38 => return format!("{} x", render(&base)),
                _ => return format!("{}{}", render(&base), render(&base)),
            }
            render(&base)
        }
    }

    /// Generates the case of `seed`.
    pub fn generate(seed: u64) -> Case {
        generate_with(seed, true)
    }

    /// Whether an event has no session id (absent or null).
    fn is_gap(f: &Fields) -> bool {
        f.iter().all(|(k, v)| k != "session_id" || v == "null")
    }

    /// Generates the case of `seed`; with `conflicting_gap_copies` false, no two copies of an
    /// event_id of a gap session differ in content (the same stream of random numbers is used,
    /// only those copies are written identical or with fresh ids).
    pub fn generate_with(seed: u64, conflicting_gap_copies: bool) -> Case {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let window_ms = *[1000, 2000, 5000, 10000].choose(&mut rng).unwrap_or(&1000);
        let gap_ms = *[5000, 10000, 20000, 30000, 60000].choose(&mut rng).unwrap_or(&5000);
        let lateness_ms = *[0, 1000, 2000, 5000, 10000].choose(&mut rng).unwrap_or(&0);
        let max_events = *[1, 2, 3, 3, 5, 1000].choose(&mut rng).unwrap_or(&3);
        let cfg = Config {
            window_ms,
            gap_ms,
            lateness_ms,
            max_events,
        };
        let n_parts = *[1, 2, 2, 3, 3, 4].choose(&mut rng).unwrap_or(&2);
        let mut g = Gen {
            rng,
            cfg,
            parts: vec![Vec::new(); n_parts],
            written: Vec::new(),
            gap_events: Vec::new(),
            next_id: 0,
        };
        let n_steps = g.rng.random_range(15..60);
        let mut cursor: i64 = 1_700_000_000_000 + g.rng.random_range(0..10_000);
        let gap = gap_ms;
        for _ in 0..n_steps {
            cursor += g.rng.random_range(0..=2500);
            if g.chance(0.05) {
                cursor += gap + g.rng.random_range(0..gap);
            }
            let r = g.rng.random_range(0..100);
            if r < 6 {
                let line = g.invalid(cursor);
                g.push(line);
            } else if r < 9 {
                g.push(String::new());
            } else if r < 17 && !g.written.is_empty() {
                // Exact copy of an earlier event.
                let i = g.rng.random_range(0..g.written.len());
                let line = render(&g.written[i]);
                g.push(line);
            } else if r < 21 && !g.written.is_empty() {
                // Same event_id, different content.
                let i = g.rng.random_range(0..g.written.len());
                let mut f = g.written[i].clone();
                match g.rng.random_range(0..4) {
                    0 => {
                        let dt = g.rng.random_range(-gap..gap);
                        let ts = f.iter().find(|(k, _)| k == "timestamp").map(|(_, v)| v.clone());
                        let ts: i64 = ts.and_then(|t| t.parse().ok()).unwrap_or(cursor);
                        set(&mut f, "timestamp", (ts + dt).to_string());
                    }
                    1 => set(&mut f, "type", js("other")),
                    2 => set(&mut f, "attributes", r#"{"browser":"opera"}"#.into()),
                    _ => set(&mut f, "revenue", "77".into()),
                }
                if !conflicting_gap_copies && is_gap(&g.written[i]) {
                    f = g.written[i].clone();
                }
                g.push(render(&f));
            } else if r < 36 {
                // A directed merge: A opens (or extends) a gap session S1; once its window has
                // passed, a late chain starting more than `gap` before A opens S2 and bridges
                // into S1 (S1 merges into S2), the first link sometimes reusing A's event_id.
                let (visitor, project) = if g.chance(0.5) {
                    (format!("m{}", g.next_id), "1".to_string())
                } else {
                    (g.pick(&VISITORS).to_string(), g.project())
                };
                let p = g.rng.random_range(0..n_parts);
                let a = g.event(cursor, &visitor, &project, None);
                let a_id = a.iter().find(|(k, _)| k == "event_id").map(|(_, v)| v.clone());
                g.parts[p].push(render(&a));
                g.written.push(a);
                let spare = (gap - window_ms).max(1);
                let pusher_ts = cursor + lateness_ms + window_ms + g.rng.random_range(0..spare);
                let session = g.pick(&SESSIONS).to_string();
                let pusher = g.event(pusher_ts, "v1", "1", Some(&session));
                g.parts[p].push(render(&pusher));
                g.written.push(pusher);
                let mut t = cursor - gap - g.rng.random_range(1..=gap);
                let mut first = true;
                loop {
                    let mut f = g.event(t, &visitor, &project, None);
                    if first && g.chance(0.3) && conflicting_gap_copies {
                        if let Some(id) = &a_id {
                            set(&mut f, "event_id", id.clone());
                        }
                    }
                    first = false;
                    g.parts[p].push(render(&f));
                    g.written.push(f);
                    if t >= cursor - gap {
                        break;
                    }
                    t += g.rng.random_range(gap / 2..=gap);
                }
                cursor = pusher_ts;
            } else if r < 40 {
                // A late burst of gap events of one visitor, spaced under the gap: they chain
                // (and may bridge into the visitor's open session: merges), sometimes reusing
                // the event_id of an earlier event of the pair (merge duplicates).
                let recent = g.gap_events.last().cloned();
                let (visitor, project, earlier) = match recent {
                    Some((v, p, _)) if g.chance(0.7) => {
                        let same: Vec<Fields> = g
                            .gap_events
                            .iter()
                            .filter(|e| e.0 == v && e.1 == p)
                            .map(|e| e.2.clone())
                            .collect();
                        (v, p, same)
                    }
                    _ => (g.pick(&VISITORS).to_string(), g.project(), Vec::new()),
                };
                let mut t = cursor - g.rng.random_range(gap + gap / 5..5 * gap / 2 + 1);
                let p = g.rng.random_range(0..n_parts);
                for _ in 0..g.rng.random_range(2..5) {
                    let mut f = g.event(t, &visitor, &project, None);
                    if !earlier.is_empty() && g.chance(0.2) && conflicting_gap_copies {
                        let i = g.rng.random_range(0..earlier.len());
                        if let Some((_, id)) = earlier[i].iter().find(|(k, _)| k == "event_id") {
                            set(&mut f, "event_id", id.clone());
                        }
                    }
                    g.parts[p].push(render(&f));
                    g.gap_events.push((visitor.clone(), project.clone(), f.clone()));
                    g.written.push(f);
                    t += g.rng.random_range(gap / 2..=gap);
                }
            } else {
                let late = g.chance(0.12);
                let ts = if late {
                    cursor - g.rng.random_range(gap / 2..2 * gap + 5000)
                } else {
                    cursor - g.rng.random_range(0..=lateness_ms + 1000)
                };
                let visitor = g.pick(&VISITORS).to_string();
                let project = g.project();
                let session = if g.chance(0.45) {
                    None
                } else {
                    Some(g.pick(&SESSIONS).to_string())
                };
                let mut f = g.event(ts, &visitor, &project, session.as_deref());
                if session.is_none() {
                    g.gap_events.push((visitor.clone(), project.clone(), f.clone()));
                    if g.chance(0.08) {
                        // The same visitor at the same time in another project: two gap
                        // sessions with one session_id, tied on (window, session_id).
                        let other = if project == "2" { "1" } else { "2" };
                        let twin = g.event(ts, &visitor, other, None);
                        g.push(render(&twin));
                        g.written.push(twin);
                    }
                }
                match g.rng.random_range(0..200) {
                    0 => set(&mut f, "event_id", js(&"é".repeat(64))),
                    1 => set(&mut f, "event_id", js(&"a".repeat(128))),
                    2 => set(&mut f, "type", js(&"t".repeat(64))),
                    3 => {
                        // Pad to exactly the longest valid line, or one byte over.
                        set(&mut f, "pad", "\"\"".into());
                        let len = render(&f).len();
                        let over = g.chance(0.5) as usize;
                        set(&mut f, "pad", js(&"p".repeat(super::MAX_LINE - len + over)));
                        let line = render(&f);
                        if over == 1 {
                            g.push(line);
                            continue;
                        }
                    }
                    _ => {}
                }
                g.push_event(f);
            }
        }
        let mut partitions = Vec::new();
        for lines in &g.parts {
            let mode = g.rng.random_range(0..3);
            let mut text = String::new();
            for (i, l) in lines.iter().enumerate() {
                text.push_str(l);
                let crlf = match mode {
                    0 => false,
                    1 => true,
                    _ => g.rng.random_bool(0.5),
                };
                let last = i + 1 == lines.len();
                if last && g.rng.random_bool(0.3) {
                    break; // no final newline
                }
                text.push_str(if crlf { "\r\n" } else { "\n" });
                if g.rng.random_bool(0.02) {
                    text.push_str("\r\n"); // a line that is empty once its \r is removed
                }
            }
            partitions.push(text.into_bytes());
        }
        Case { seed, cfg, partitions }
    }
}
