//! The SessionDB layout: row keys, columns, cell timestamps and values (pure code).
//!
//! One row per session, in two column families: the data family (default `s`) holds the
//! big cells, the query family (default `q`) the small ones queries read. A scan of `q` columns
//! reads only `q`'s store files, never the ~2 KB snapshots beside them: measured on a
//! 1M-event table, a project aggregate over narrow rows took 29-31 ms against 46-52 ms when the
//! same columns shared a family with the snapshots.
//!
//! | column | value |
//! |---|---|
//! | `s:snapshot` | the spec's snapshot JSON, exactly as the snapshot file has it |
//! | `s:state` | the session's full state (`Session::to_state`), only on snapshots of open sessions |
//! | `q:start`, `q:end` | first / last event time, ms: 8-byte big-endian signed |
//! | `q:event_count` | accepted events: 8-byte big-endian |
//! | `q:revenue` | revenue sum, minor units: 16-byte big-endian signed (an `i128`) |
//! | `q:visitor_id` | visitor of the first event (UTF-8) |
//! | `q:project_id` | project of the first event: 8-byte big-endian |
//! | `q:experiments` | `experiment:variation` pairs, sorted, comma-separated (`11:2,12:1`; empty when none) |
//! | `q:names` | JSON array of the distinct `name`s of the listed events, sorted |
//! | `q:window` | the snapshot's window index: 8-byte big-endian |
//! | `q:closed` | 1 byte: `1` for the final snapshot, else `0` |
//! | `q:merged_into` | survivor's id (UTF-8), only on the final snapshot of a merged-away gap session |
//!
//! Every cell of a snapshot of window `m` is written with timestamp [`cell_ts`]`(m)` = the last
//! millisecond of `m`, `(m + 1) * W - 1`, so rewriting a snapshot is idempotent, an older
//! snapshot can never hide a newer one, and a read with a time range below `F * W` sees the
//! table as it stood after window `F - 1`.
//!
//! Row key (binary): `[salt: 1][project_id: 8 BE][opened_window: 8 BE][session_id][0x00][kind: 1]`
//! where `salt = key_hash(session key) % 16` spreads writes over 16 key ranges, the project
//! prefix serves project queries with 16 prefix scans, `opened_window` keeps a session id reused
//! after its closed-set entry expired from overwriting the earlier session's row (and makes a
//! time range a row range), and `kind` is `g` (gap-based) or `s` (client id). Fixed-length
//! fields before and after the id make any id bytes unambiguous.
//!
//! The row [`META_ROW`] (salt byte `0xff`, outside every session range) holds the sink's
//! progress markers: `s:written` (latest window written) and `s:compacted` (latest window whose
//! closed rows had their history dropped), each at the timestamp of its window. Event-per-cell
//! tables have the data family only (`s:event`).

use hbase_thrift::hbase::{BatchMutation, Mutation, TCell, TRowResult};

use crate::record::Sourced;
use crate::session::operator::key_hash;
use crate::session::Snapshot;

use super::client::HbaseError;

/// Default data family: snapshots, states, the meta row, event-per-cell events.
pub const DATA_FAMILY: &str = "s";

/// Default query family: the small columns queries read.
pub const QUERY_FAMILY: &str = "q";

/// The qualifiers of [`col`] held by the data family; every other one is in the query family.
const DATA_COLUMNS: [&str; 5] = [col::SNAPSHOT, col::STATE, col::EVENT, col::WRITTEN, col::COMPACTED];

/// Number of salt buckets (the first row-key byte).
pub const SALTS: u8 = 16;

/// The row that holds the sink's progress markers.
pub const META_ROW: &[u8] = b"\xffsessionflow-meta";

/// Column qualifiers of a session row.
pub mod col {
    /// Snapshot JSON.
    pub const SNAPSHOT: &str = "snapshot";
    /// First event time.
    pub const START: &str = "start";
    /// Last event time.
    pub const END: &str = "end";
    /// Accepted events.
    pub const EVENT_COUNT: &str = "event_count";
    /// Revenue sum.
    pub const REVENUE: &str = "revenue";
    /// Visitor.
    pub const VISITOR_ID: &str = "visitor_id";
    /// Project.
    pub const PROJECT_ID: &str = "project_id";
    /// Experiment variations.
    pub const EXPERIMENTS: &str = "experiments";
    /// Distinct `name`s of the listed events (conversion queries).
    pub const NAMES: &str = "names";
    /// Snapshot window.
    pub const WINDOW: &str = "window";
    /// Final snapshot flag.
    pub const CLOSED: &str = "closed";
    /// Survivor of a merge.
    pub const MERGED_INTO: &str = "merged_into";
    /// Resume state.
    pub const STATE: &str = "state";
    /// Event JSON (event-per-cell tables).
    pub const EVENT: &str = "event";
    /// Meta row: latest window written.
    pub const WRITTEN: &str = "written";
    /// Meta row: latest window whose closed rows were compacted.
    pub const COMPACTED: &str = "compacted";
}

/// `family:qualifier` as Thrift1 names a column.
pub fn column(family: &str, qualifier: &str) -> Vec<u8> {
    format!("{family}:{qualifier}").into_bytes()
}

/// The cell timestamp of window `m`: its last millisecond, `(m + 1) * W - 1`.
pub fn cell_ts(window: u64, window_ms: u64) -> i64 {
    let t = (window as i128 + 1) * window_ms.max(1) as i128 - 1;
    t.clamp(0, i64::MAX as i128) as i64
}

/// The exclusive upper bound of a read "as of the end of window `m`" (`cell_ts(m) + 1`).
pub fn as_of_bound(window: u64, window_ms: u64) -> i64 {
    cell_ts(window, window_ms).saturating_add(1)
}

/// The salt of a session key.
pub fn salt(session_id: Option<&str>, project_id: u64, visitor_id: &str) -> u8 {
    (key_hash(session_id, project_id, visitor_id) % SALTS as u64) as u8
}

/// What a session row key says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowKey {
    /// Salt bucket.
    pub salt: u8,
    /// Project (of the first event when the row was first written).
    pub project_id: u64,
    /// Window the session opened in.
    pub opened_window: u64,
    /// Session id bytes.
    pub session_id: Vec<u8>,
    /// Gap-based (no client id).
    pub gap_based: bool,
}

impl RowKey {
    /// The row key of a snapshot's session.
    pub fn of(s: &Snapshot) -> RowKey {
        let salt = if s.gap_based {
            salt(None, s.project_id, &s.visitor_id)
        } else {
            salt(Some(&s.session_id), 0, "")
        };
        RowKey {
            salt,
            // The opening event's project never changes, so the row key is stable for the
            // session's whole life (`project_id` follows the first event by timestamp).
            project_id: s.opened_project,
            opened_window: s.opened_window,
            session_id: s.session_id.as_bytes().to_vec(),
            gap_based: s.gap_based,
        }
    }

    /// The key bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(19 + self.session_id.len());
        k.push(self.salt);
        k.extend_from_slice(&self.project_id.to_be_bytes());
        k.extend_from_slice(&self.opened_window.to_be_bytes());
        k.extend_from_slice(&self.session_id);
        k.push(0);
        k.push(if self.gap_based { b'g' } else { b's' });
        k
    }

    /// Parses key bytes (`None` when they are not a session row key).
    pub fn decode(k: &[u8]) -> Option<RowKey> {
        if k.len() < 19 || k[0] >= SALTS || k[k.len() - 2] != 0 {
            return None;
        }
        let gap_based = match k[k.len() - 1] {
            b'g' => true,
            b's' => false,
            _ => return None,
        };
        let project_id = u64::from_be_bytes(k[1..9].try_into().ok()?);
        let opened_window = u64::from_be_bytes(k[9..17].try_into().ok()?);
        Some(RowKey {
            salt: k[0],
            project_id,
            opened_window,
            session_id: k[17..k.len() - 2].to_vec(),
            gap_based,
        })
    }
}

/// The first key of a project's range in a salt bucket, from window `from` on.
pub fn project_start(salt: u8, project_id: u64, from_window: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(salt);
    k.extend_from_slice(&project_id.to_be_bytes());
    if from_window > 0 {
        k.extend_from_slice(&from_window.to_be_bytes());
    }
    k
}

/// The key just past a project's range in a salt bucket.
pub fn project_stop(salt: u8, project_id: u64) -> Vec<u8> {
    match project_id.checked_add(1) {
        Some(next) => {
            let mut k = vec![salt];
            k.extend_from_slice(&next.to_be_bytes());
            k
        }
        None => vec![salt + 1],
    }
}

/// A row key (or any bytes) for display: printable ASCII as is, other bytes as `\xHH`
/// (HBase's `toStringBinary` convention).
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02X}"));
        }
    }
    s
}

/// `11:2,12:1`.
pub fn experiments_text(pairs: &[(u64, u64)]) -> String {
    let mut s = String::new();
    for (i, (x, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{x}:{v}"));
    }
    s
}

/// Parses [`experiments_text`]; `None` on malformed text.
pub fn parse_experiments(text: &[u8]) -> Option<Vec<(u64, u64)>> {
    let text = std::str::from_utf8(text).ok()?;
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|p| {
            let (x, v) = p.split_once(':')?;
            Some((x.parse().ok()?, v.parse().ok()?))
        })
        .collect()
}

fn put(column: Vec<u8>, value: Vec<u8>) -> Mutation {
    Mutation {
        is_delete: Some(false),
        column: Some(column),
        value: Some(value),
        write_to_w_a_l: Some(true),
    }
}

/// Precomputed `family:qualifier` names of a table's two families (data and query).
#[derive(Clone, Debug)]
pub struct Columns {
    /// The data family (`s`).
    pub data_family: String,
    /// The query family (`q`).
    pub query_family: String,
    /// `s:snapshot`.
    pub snapshot: Vec<u8>,
    /// `q:start`.
    pub start: Vec<u8>,
    /// `q:end`.
    pub end: Vec<u8>,
    /// `q:event_count`.
    pub event_count: Vec<u8>,
    /// `q:revenue`.
    pub revenue: Vec<u8>,
    /// `q:visitor_id`.
    pub visitor_id: Vec<u8>,
    /// `q:project_id`.
    pub project_id: Vec<u8>,
    /// `q:experiments`.
    pub experiments: Vec<u8>,
    /// `q:names`.
    pub names: Vec<u8>,
    /// `q:window`.
    pub window: Vec<u8>,
    /// `q:closed`.
    pub closed: Vec<u8>,
    /// `q:merged_into`.
    pub merged_into: Vec<u8>,
    /// `s:state`.
    pub state: Vec<u8>,
    /// `s:event`.
    pub event: Vec<u8>,
    /// `s:written`.
    pub written: Vec<u8>,
    /// `s:compacted`.
    pub compacted: Vec<u8>,
}

impl Default for Columns {
    /// Families `s` and `q`.
    fn default() -> Self {
        Columns::new(DATA_FAMILY, QUERY_FAMILY)
    }
}

impl Columns {
    /// The names in data family `data` and query family `query`.
    pub fn new(data: &str, query: &str) -> Columns {
        let name = |q: &str| column(if DATA_COLUMNS.contains(&q) { data } else { query }, q);
        Columns {
            data_family: data.to_string(),
            query_family: query.to_string(),
            snapshot: name(col::SNAPSHOT),
            start: name(col::START),
            end: name(col::END),
            event_count: name(col::EVENT_COUNT),
            revenue: name(col::REVENUE),
            visitor_id: name(col::VISITOR_ID),
            project_id: name(col::PROJECT_ID),
            experiments: name(col::EXPERIMENTS),
            names: name(col::NAMES),
            window: name(col::WINDOW),
            closed: name(col::CLOSED),
            merged_into: name(col::MERGED_INTO),
            state: name(col::STATE),
            event: name(col::EVENT),
            written: name(col::WRITTEN),
            compacted: name(col::COMPACTED),
        }
    }

    /// `family:qualifier` of a qualifier of [`col`], in the family that holds it.
    pub fn named(&self, qualifier: &str) -> Vec<u8> {
        let family = if DATA_COLUMNS.contains(&qualifier) {
            &self.data_family
        } else {
            &self.query_family
        };
        column(family, qualifier)
    }

    /// The row of a snapshot: every column but `s:state` (open sessions only) and
    /// `q:merged_into` (merged-away sessions only). `snap.json` and `snap.state` are moved out.
    pub fn snapshot_row(&self, snap: &mut Snapshot) -> BatchMutation {
        let key = RowKey::of(snap).encode();
        let mut m = Vec::with_capacity(13);
        let names = names_text(&event_names(snap.json.as_bytes()));
        m.push(put(self.snapshot.clone(), std::mem::take(&mut snap.json).into_bytes()));
        m.push(put(self.names.clone(), names));
        m.push(put(self.start.clone(), snap.start.to_be_bytes().to_vec()));
        m.push(put(self.end.clone(), snap.end.to_be_bytes().to_vec()));
        m.push(put(self.event_count.clone(), snap.event_count.to_be_bytes().to_vec()));
        m.push(put(self.revenue.clone(), snap.revenue.to_be_bytes().to_vec()));
        m.push(put(self.visitor_id.clone(), snap.visitor_id.as_bytes().to_vec()));
        m.push(put(self.project_id.clone(), snap.project_id.to_be_bytes().to_vec()));
        m.push(put(
            self.experiments.clone(),
            experiments_text(&snap.experiments).into_bytes(),
        ));
        m.push(put(self.window.clone(), snap.window.to_be_bytes().to_vec()));
        m.push(put(self.closed.clone(), vec![u8::from(snap.closed)]));
        if let Some(into) = &snap.merged_into {
            m.push(put(self.merged_into.clone(), into.as_bytes().to_vec()));
        }
        if !snap.closed {
            if let Some(state) = snap.state.take() {
                m.push(put(self.state.clone(), state));
            }
        }
        BatchMutation {
            row: Some(key),
            mutations: Some(m),
        }
    }

    /// A delete of every version of every column of `row` (both families) at or before the
    /// call's timestamp.
    pub fn delete_history(&self, row: Vec<u8>) -> BatchMutation {
        let family = |f: &str| Mutation {
            is_delete: Some(true),
            column: Some(f.as_bytes().to_vec()),
            value: None,
            write_to_w_a_l: Some(true),
        };
        BatchMutation {
            row: Some(row),
            mutations: Some(vec![family(&self.data_family), family(&self.query_family)]),
        }
    }

    /// The meta row's `written` marker for window `m`.
    pub fn written_marker(&self, window: u64) -> BatchMutation {
        BatchMutation {
            row: Some(META_ROW.to_vec()),
            mutations: Some(vec![put(self.written.clone(), window.to_be_bytes().to_vec())]),
        }
    }

    /// The meta row's `compacted` marker for closing window `c`.
    pub fn compacted_marker(&self, closed_window: u64) -> BatchMutation {
        BatchMutation {
            row: Some(META_ROW.to_vec()),
            mutations: Some(vec![put(self.compacted.clone(), closed_window.to_be_bytes().to_vec())]),
        }
    }

    /// The event-per-cell row of an event: one cell, `s:event`, holding the event's line.
    pub fn event_row(&self, rec: &Sourced) -> BatchMutation {
        let key = event_row_key(
            rec.event.project_id,
            &rec.event.visitor_id,
            rec.event.timestamp,
            &rec.event.event_id,
        );
        BatchMutation {
            row: Some(key),
            mutations: Some(vec![put(self.event.clone(), rec.raw.as_bytes().to_vec())]),
        }
    }

    /// The columns the restore reads.
    pub fn restore_columns(&self) -> Vec<Vec<u8>> {
        vec![
            self.start.clone(),
            self.end.clone(),
            self.visitor_id.clone(),
            self.project_id.clone(),
            self.window.clone(),
            self.closed.clone(),
            self.merged_into.clone(),
            self.state.clone(),
        ]
    }
}

/// The sorted distinct `name`s of the events listed in a snapshot JSON (empty when it is not
/// one: the engine writes it, so that does not happen).
pub fn event_names(snapshot_json: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        name: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Snap {
        events: Vec<Named>,
    }
    let mut names: Vec<String> = serde_json::from_slice::<Snap>(snapshot_json)
        .map(|s| s.events.into_iter().filter_map(|e| e.name).collect())
        .unwrap_or_default();
    names.sort_unstable();
    names.dedup();
    names
}

/// `q:names`: a JSON array of strings.
pub fn names_text(names: &[String]) -> Vec<u8> {
    serde_json::to_vec(names).unwrap_or_else(|_| b"[]".to_vec())
}

/// Parses `q:names`.
pub fn parse_names(text: &[u8]) -> Option<Vec<String>> {
    serde_json::from_slice(text).ok()
}

/// Event-per-cell row key: `[salt][project_id: 8 BE][visitor length: 1][visitor][timestamp: 8 BE][event_id]`,
/// salted by `(project, visitor)` so a visitor's events are contiguous and time-ordered.
pub fn event_row_key(project_id: u64, visitor_id: &str, timestamp: i64, event_id: &str) -> Vec<u8> {
    let v = visitor_id.as_bytes();
    let v = &v[..v.len().min(255)];
    let mut k = Vec::with_capacity(18 + v.len() + 8 + event_id.len());
    k.push(salt(None, project_id, visitor_id));
    k.extend_from_slice(&project_id.to_be_bytes());
    k.push(v.len() as u8);
    k.extend_from_slice(v);
    k.extend_from_slice(&(timestamp as u64 ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(event_id.as_bytes());
    k
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

fn be_i64(v: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(v.try_into().ok()?))
}

/// A session row as read back (the columns that were asked for and exist).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionRow {
    /// Row key bytes.
    pub key: Vec<u8>,
    /// The row key's parts.
    pub id: Option<RowKey>,
    /// `s:snapshot`.
    pub snapshot: Option<Vec<u8>>,
    /// `q:start`.
    pub start: Option<i64>,
    /// `q:end`.
    pub end: Option<i64>,
    /// `q:event_count`.
    pub event_count: Option<u64>,
    /// `q:revenue`.
    pub revenue: Option<i128>,
    /// `q:visitor_id`.
    pub visitor_id: Option<Vec<u8>>,
    /// `q:project_id`.
    pub project_id: Option<u64>,
    /// `q:experiments`.
    pub experiments: Option<Vec<(u64, u64)>>,
    /// `q:names`.
    pub names: Option<Vec<String>>,
    /// `q:window`, with its cell timestamp.
    pub window: Option<(u64, i64)>,
    /// `q:closed`.
    pub closed: Option<bool>,
    /// `q:merged_into`.
    pub merged_into: Option<Vec<u8>>,
    /// `s:state`, with its cell timestamp.
    pub state: Option<(Vec<u8>, i64)>,
}

impl SessionRow {
    /// Decodes a Thrift row of the families of `cols`; malformed cells are an error naming the
    /// row.
    pub fn decode(cols: &Columns, r: TRowResult) -> Result<SessionRow, HbaseError> {
        let key = r.row.unwrap_or_default();
        let bad = |what: &str| HbaseError::BadRow {
            row: escape(&key),
            reason: format!("malformed {what}"),
        };
        let mut row = SessionRow {
            id: RowKey::decode(&key),
            ..SessionRow::default()
        };
        for (name, cell) in r.columns.unwrap_or_default() {
            // Qualifiers are distinct across the two families.
            let Some(q) = strip_family(&name, &cols.query_family).or_else(|| strip_family(&name, &cols.data_family))
            else {
                continue;
            };
            let TCell { value, timestamp } = cell;
            let v = value.unwrap_or_default();
            let ts = timestamp.unwrap_or(0);
            match std::str::from_utf8(q).unwrap_or("") {
                col::SNAPSHOT => row.snapshot = Some(v),
                col::START => row.start = Some(be_i64(&v).ok_or_else(|| bad(col::START))?),
                col::END => row.end = Some(be_i64(&v).ok_or_else(|| bad(col::END))?),
                col::EVENT_COUNT => row.event_count = Some(be_u64(&v).ok_or_else(|| bad(col::EVENT_COUNT))?),
                col::REVENUE => {
                    let b: [u8; 16] = v.as_slice().try_into().map_err(|_| bad(col::REVENUE))?;
                    row.revenue = Some(i128::from_be_bytes(b));
                }
                col::VISITOR_ID => row.visitor_id = Some(v),
                col::PROJECT_ID => row.project_id = Some(be_u64(&v).ok_or_else(|| bad(col::PROJECT_ID))?),
                col::EXPERIMENTS => row.experiments = Some(parse_experiments(&v).ok_or_else(|| bad(col::EXPERIMENTS))?),
                col::NAMES => row.names = Some(parse_names(&v).ok_or_else(|| bad(col::NAMES))?),
                col::WINDOW => row.window = Some((be_u64(&v).ok_or_else(|| bad(col::WINDOW))?, ts)),
                col::CLOSED => {
                    row.closed = Some(match v.as_slice() {
                        [0] => false,
                        [1] => true,
                        _ => return Err(bad(col::CLOSED)),
                    })
                }
                col::MERGED_INTO => row.merged_into = Some(v),
                col::STATE => row.state = Some((v, ts)),
                _ => {}
            }
        }
        row.key = key;
        Ok(row)
    }

    /// The key for display.
    pub fn display_key(&self) -> String {
        escape(&self.key)
    }
}

/// The qualifier of `family:qualifier` `name`, when `name` is in `family`.
fn strip_family<'a>(name: &'a [u8], family: &str) -> Option<&'a [u8]> {
    name.strip_prefix(family.as_bytes())?.strip_prefix(b":")
}

/// Reads a big-endian `u64` cell value.
pub fn decode_u64(v: &[u8]) -> Option<u64> {
    be_u64(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, gap: bool) -> Snapshot {
        Snapshot {
            session_id: id.into(),
            gap_based: gap,
            project_id: 7,
            visitor_id: "v1".into(),
            start: 1_700_000_000_000,
            end: 1_700_000_060_000,
            event_count: 2,
            revenue: -5,
            experiments: vec![(11, 2), (12, 1)],
            window: 28_333_334,
            closed: false,
            opened_window: 28_333_333,
            opened_project: 7,
            merged_into: None,
            json: "{\"session_id\":\"s1\"}".into(),
            state: Some(vec![1, 2, 3]),
        }
    }

    #[test]
    fn names_are_the_listed_events_distinct_names() {
        let json = br#"{"session_id":"s","events":[{"event_id":"a","type":"conversion","name":"purchase"},
            {"event_id":"b","type":"pageview","tags":{"name":"not this"}},{"event_id":"c","name":"add \"to\" cart"},
            {"event_id":"d","name":"purchase"}],"closed":false}"#;
        let names = event_names(json);
        assert_eq!(names, vec!["add \"to\" cart".to_string(), "purchase".to_string()]);
        assert_eq!(parse_names(&names_text(&names)), Some(names));
        assert!(event_names(b"{\"events\":[]}").is_empty());
        assert!(event_names(b"not json").is_empty());
        assert_eq!(names_text(&[]), b"[]");
    }

    #[test]
    fn row_keys_round_trip_any_id_bytes() {
        for id in ["s1", "", "a\u{0}g\u{0}s", "\u{0}", "ünï\\cødé", "x@1700000000000"] {
            for gap in [false, true] {
                let k = RowKey::of(&snap(id, gap));
                let bytes = k.encode();
                assert_eq!(RowKey::decode(&bytes), Some(k.clone()), "{id:?}");
                assert!(bytes[0] < SALTS);
                assert!(bytes.starts_with(&project_start(bytes[0], 7, 0)));
                assert!(bytes.as_slice() < project_stop(bytes[0], 7).as_slice());
            }
        }
        assert_eq!(RowKey::decode(META_ROW), None);
        assert_eq!(RowKey::decode(b"short"), None);
    }

    #[test]
    fn reused_ids_get_distinct_rows_and_salts_follow_the_routing_hash() {
        let a = snap("s1", false);
        let mut b = snap("s1", false);
        b.opened_window += 40;
        assert_ne!(RowKey::of(&a).encode(), RowKey::of(&b).encode());
        assert_eq!(RowKey::of(&a).salt as u64, key_hash(Some("s1"), 0, "") % 16);
        let g = snap("v1@1", true);
        assert_eq!(RowKey::of(&g).salt as u64, key_hash(None, 7, "v1") % 16);
    }

    #[test]
    fn cell_timestamps_are_the_last_millisecond_of_the_window() {
        assert_eq!(cell_ts(0, 60_000), 59_999);
        assert_eq!(cell_ts(28_333_334, 60_000), 1_700_000_099_999);
        assert_eq!(as_of_bound(4, 1000), 5000);
        assert_eq!(cell_ts(u64::MAX, 60_000), i64::MAX);
    }

    #[test]
    fn snapshot_rows_decode_back() {
        let cols = Columns::default();
        let mut s = snap("s1", false);
        let b = cols.snapshot_row(&mut s);
        assert_eq!(b.row, Some(RowKey::of(&snap("s1", false)).encode()));
        let muts = b.mutations.unwrap_or_default();
        assert_eq!(muts.len(), 12, "11 query columns + state");
        let columns = muts
            .into_iter()
            .map(|m| {
                (
                    m.column.unwrap_or_default(),
                    TCell {
                        value: m.value,
                        timestamp: Some(9),
                    },
                )
            })
            .collect();
        let row = SessionRow::decode(
            &cols,
            TRowResult {
                row: b.row,
                columns: Some(columns),
                sorted_columns: None,
            },
        );
        let row = row.unwrap_or_default();
        assert_eq!(row.start, Some(1_700_000_000_000));
        assert_eq!(row.revenue, Some(-5));
        assert_eq!(row.experiments, Some(vec![(11, 2), (12, 1)]));
        assert_eq!(row.window, Some((28_333_334, 9)));
        assert_eq!(row.closed, Some(false));
        assert_eq!(row.state, Some((vec![1, 2, 3], 9)));
        assert_eq!(row.snapshot.as_deref(), Some(&b"{\"session_id\":\"s1\"}"[..]));
        assert_eq!(row.names, Some(vec![]));
        // Closed snapshots carry no state.
        let mut c = snap("s1", false);
        c.closed = true;
        let n = cols.snapshot_row(&mut c).mutations.map_or(0, |m| m.len());
        assert_eq!(n, 11);
    }

    #[test]
    fn big_cells_go_to_the_data_family_and_query_columns_to_the_query_family() {
        let cols = Columns::new("d", "x");
        let mut s = snap("s1", false);
        let b = cols.snapshot_row(&mut s);
        let mut names: Vec<String> = b
            .mutations
            .unwrap_or_default()
            .into_iter()
            .map(|m| String::from_utf8(m.column.unwrap_or_default()).unwrap_or_default())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "d:snapshot",
                "d:state",
                "x:closed",
                "x:end",
                "x:event_count",
                "x:experiments",
                "x:names",
                "x:project_id",
                "x:revenue",
                "x:start",
                "x:visitor_id",
                "x:window"
            ]
        );
        for n in &names {
            let (_, q) = n.split_once(':').unwrap_or_default();
            assert_eq!(cols.named(q), n.as_bytes(), "{n}");
        }
        // The history delete covers both families.
        let d = cols.delete_history(b"k".to_vec()).mutations.unwrap_or_default();
        let fams: Vec<_> = d.iter().map(|m| (m.column.clone(), m.is_delete)).collect();
        assert_eq!(
            fams,
            [(Some(b"d".to_vec()), Some(true)), (Some(b"x".to_vec()), Some(true))]
        );
    }

    #[test]
    fn experiments_text_round_trips() {
        assert_eq!(experiments_text(&[(11, 2), (12, 1)]), "11:2,12:1");
        assert_eq!(parse_experiments(b"11:2,12:1"), Some(vec![(11, 2), (12, 1)]));
        assert_eq!(parse_experiments(b""), Some(vec![]));
        assert_eq!(parse_experiments(b"11"), None);
    }

    #[test]
    fn escaping_shows_binary_bytes() {
        assert_eq!(escape(b"\x07ab\x00g\\"), "\\x07ab\\x00g\\x5C");
    }
}
