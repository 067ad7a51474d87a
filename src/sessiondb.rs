//! SessionDB: the HBase table of sessions (schema, row keys, sinks, restore).
//!
//! The layout is defined next to the sink, in
//! [`sessionflow_operators::sink::hbase::schema`] (re-exported here as [`schema`]), because the
//! sink writes it; this module adds what the job and the tools need around it:
//!
//! - [`HbaseSessions`] / [`HbaseEvents`]: the sinks as [`Attach`] values for
//!   [`crate::pipeline::Outputs`];
//! - [`restore`]: a worker's [`SessionStore`] as of a resume window, read back from SessionDB
//!   with one bounded scan per salt bucket the worker owns, or per bucket when the session
//!   routing follows the input's partitions (never a lookup per event);
//! - [`scan_rows`]: the scan helper behind `sessionflow query` and the tests.
//!
//! See `docs/sessiondb.md` for the schema's reasoning, recovery and measurements.

use std::collections::HashMap;
use std::time::Duration;

use hbase_thrift::hbase::{TRowResult, TScan};
use sessionflow_operators::record::Sourced;
use sessionflow_operators::session::{Routing, Session, SessionConfig, SessionStore, Snapshot};
pub use sessionflow_operators::sink::hbase::client::{self, HbaseClient, HbaseError};
pub use sessionflow_operators::sink::hbase::schema;
use sessionflow_operators::sink::hbase::schema::{Columns, RowKey, SessionRow, META_ROW, SALTS};
pub use sessionflow_operators::sink::hbase::{
    HbaseSink, HbaseSinkConfig, SinkHbase, SinkHbaseEvents, SinkMode, SinkStats,
};
use timely::dataflow::StreamVec;

use crate::pipeline::Attach;

/// The SessionDB sink (one row per session) as a snapshot-stream [`Attach`].
pub struct HbaseSessions(pub HbaseSink);

impl Attach<Snapshot> for HbaseSessions {
    fn attach<'s>(self: Box<Self>, stream: StreamVec<'s, u64, Snapshot>) -> StreamVec<'s, u64, ()> {
        stream.sink_hbase_with(self.0)
    }
}

/// The event-per-cell sink as an event-stream [`Attach`].
pub struct HbaseEvents(pub HbaseSink);

impl Attach<Sourced> for HbaseEvents {
    fn attach<'s>(self: Box<Self>, stream: StreamVec<'s, u64, Sourced>) -> StreamVec<'s, u64, ()> {
        stream.sink_hbase_events(self.0)
    }
}

/// Quotes bytes for HBase's filter language (`'...'`, a quote doubled).
pub fn filter_quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'\'');
    for &b in bytes {
        out.push(b);
        if b == b'\'' {
            out.push(b'\'');
        }
    }
    out.push(b'\'');
    out
}

/// `SingleColumnValueFilter` keeping rows whose (latest in range) `family:qualifier` value
/// compares `op` (`>=`, `<` ...) to `value` bytewise; rows without the column are dropped.
pub fn value_filter(family: &str, qualifier: &str, op: &str, value: &[u8]) -> Vec<u8> {
    let mut v = b"binary:".to_vec();
    v.extend_from_slice(value);
    column_filter(family, qualifier, op, &v)
}

/// `SingleColumnValueFilter` keeping rows whose (latest in range) `family:qualifier` value
/// matches the Java regular expression `regex` somewhere; rows without the column are dropped.
pub fn regex_filter(family: &str, qualifier: &str, regex: &str) -> Vec<u8> {
    column_filter(family, qualifier, "=", format!("regexstring:{regex}").as_bytes())
}

fn column_filter(family: &str, qualifier: &str, op: &str, comparator: &[u8]) -> Vec<u8> {
    let mut f = format!("SingleColumnValueFilter('{family}', '{qualifier}', {op}, ").into_bytes();
    f.extend_from_slice(&filter_quote(comparator));
    f.extend_from_slice(b", true, true)");
    f
}

/// Runs one scan with `client`, decoding each row of the families of `cols`.
pub fn scan_rows(
    client: &mut HbaseClient,
    table: &str,
    cols: &Columns,
    scan: TScan,
    mut each: impl FnMut(SessionRow) -> Result<(), HbaseError>,
) -> Result<(), HbaseError> {
    let mut failure = None;
    client.scan(table, scan, 1000, |r: TRowResult| {
        match SessionRow::decode(cols, r).and_then(&mut each) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    failure.map_or(Ok(()), Err)
}

/// A scan of salt bucket `salt` (all of it), as of `before` (exclusive, ms) when given.
pub fn salt_scan(salt: u8, columns: Vec<Vec<u8>>, before: Option<i64>, filter: Option<Vec<u8>>) -> TScan {
    TScan {
        start_row: Some(vec![salt]),
        stop_row: Some(vec![salt + 1]),
        timestamp: before,
        columns: Some(columns),
        caching: Some(1000),
        filter_string: filter,
        batch_size: None,
        sort_columns: None,
        reversed: None,
        cache_blocks: Some(false),
    }
}

/// What [`restore`] rebuilt.
pub struct Restored {
    /// The worker's store: sessions open at the end of window `F - 1` and closed-set entries
    /// still live at `F`.
    pub store: SessionStore,
    /// Closed rows whose history the sink still has to drop (hand to [`HbaseSink`]).
    pub pending_compactions: Vec<(u64, Vec<u8>)>,
    /// Sessions restored open.
    pub open: usize,
    /// Closed-set entries restored.
    pub closed: usize,
    /// Rows the scans returned (all workers' rows in the salts this worker scanned).
    pub rows_scanned: usize,
}

/// The worker (of `peers`) that owns a session row under `routing`.
fn owner(row: &SessionRow, id: &RowKey, routing: Routing, peers: usize) -> Result<usize, HbaseError> {
    let bad = |why: &str| HbaseError::BadRow {
        row: row.display_key(),
        reason: why.to_string(),
    };
    if id.gap_based {
        let visitor = row
            .visitor_id
            .as_deref()
            .ok_or_else(|| bad("gap session row without q:visitor_id"))?;
        let visitor = std::str::from_utf8(visitor).map_err(|_| bad("visitor id is not UTF-8"))?;
        Ok(routing.owner(None, row.project_id.unwrap_or(id.project_id), visitor, peers))
    } else {
        let sid = std::str::from_utf8(&id.session_id).map_err(|_| bad("session id is not UTF-8"))?;
        Ok(routing.owner(Some(sid), 0, "", peers))
    }
}

/// Rebuilds worker `worker_index`'s (of `peers`) session store as it stood at the end of
/// window `resume - 1`, from SessionDB (table and family of `cfg`), so the job resumes
/// exactly at window `resume` (the Kafka source's commit frontier `F`):
///
/// - one scan per salt bucket the worker owns (bucket `b` with `b % peers == index` when
///   `peers` divides 16 and the session routing is [`Routing::Hash`], else every bucket,
///   keeping the rows `session.routing` gives the worker), reading each row's
///   latest version below `F * W` (`TScan.timestamp`, which HBase's Thrift1 gateway turns into
///   the time range `[0, F * W)`), only rows whose `q:window` then is at least
///   `F - max(ceil(gap / W), retain) - 1` (a server-side `SingleColumnValueFilter`: older rows
///   can be neither open nor in the closed set at `F`), and only the restore columns;
/// - a row whose version is open: `Session::from_state(s:state)` restored open;
/// - a row closed at `c` (and not merged away) with `c + ceil(gap / W) >= F`: a closed-set
///   entry; rows closed at `c` with `c + retain >= F` still need their history dropped.
///
/// It first checks, from the sink's progress markers, that the table still holds the versions
/// as of `F - 1` (the job never wrote more than `max_versions - 2` windows past `F`, nor
/// dropped the history of a row closed at or after `F`); otherwise an exact restore is
/// impossible and this is an error.
pub fn restore(
    worker_index: usize,
    peers: usize,
    resume: u64,
    cfg: &HbaseSinkConfig,
    session: &SessionConfig,
) -> Result<Restored, HbaseError> {
    let who = format!("hbase restore (worker {worker_index})");
    let deadline = Duration::from_millis(cfg.startup_timeout_ms);
    let mut c = client::connect_with_retry(&cfg.thrift, cfg.timeouts(), cfg.backoff(), deadline, &who)?;
    let cols = cfg.columns();
    let versions = match c.families(&cfg.table)? {
        None => {
            return Err(HbaseError::NoTable {
                table: cfg.table.clone(),
            })
        }
        Some(found) => client::family_versions(&cfg.table, &found, &cfg.families())?,
    };
    let mut store = SessionStore::new(session.clone());
    let mut out = Restored {
        store: SessionStore::new(session.clone()),
        pending_compactions: Vec::new(),
        open: 0,
        closed: 0,
        rows_scanned: 0,
    };
    if resume == 0 {
        out.store = store;
        return Ok(out);
    }
    // 1. Is the state as of F - 1 still there?
    if let Some(meta) = c.get_row(
        &cfg.table,
        META_ROW,
        &[cols.written.clone(), cols.compacted.clone()],
        None,
    )? {
        let cells = meta.columns.unwrap_or_default();
        let get = |col: &Vec<u8>| {
            cells
                .get(col)
                .and_then(|cell| cell.value.as_deref())
                .and_then(schema::decode_u64)
        };
        if let Some(written) = get(&cols.written) {
            if written + 2 > resume + versions.max(1) as u64 {
                return Err(HbaseError::Restore(format!(
                    "cannot restore {} exactly at window {resume}: the job had written up to window {written}, more than the {versions} versions the table keeps (max_versions - 2 = {} windows past the commit); raise --hbase-max-versions for a new table",
                    cfg.table,
                    versions - 2
                )));
            }
        }
        if let Some(compacted) = get(&cols.compacted) {
            if compacted >= resume {
                return Err(HbaseError::Restore(format!(
                    "cannot restore {} exactly at window {resume}: the sink already dropped the history of rows closed in window {compacted} (the commit lagged more than {} windows); raise --hbase-retain-windows",
                    cfg.table,
                    cfg.retain()
                )));
            }
        }
    }
    // 2. One bounded scan per owned salt bucket.
    let closed_windows = session.closed_windows();
    let retain = cfg.retain();
    let lowest = resume.saturating_sub(closed_windows.max(retain) + 1);
    let before = schema::as_of_bound(resume - 1, session.window_ms);
    // A row's salt is its key hash modulo 16, so under the hash routing a worker owns whole
    // salt buckets when the workers divide 16; otherwise every worker scans every bucket.
    let owned = |salt: u8| {
        session.routing != Routing::Hash
            || !(SALTS as usize).is_multiple_of(peers.max(1))
            || (salt as usize) % peers.max(1) == worker_index
    };
    let filter = value_filter(&cfg.query_family, schema::col::WINDOW, ">=", &lowest.to_be_bytes());
    // Latest version per session: (gap, id, opened window) -> row. Rows for the same session
    // under two project ids (its first event changed project) keep the newer.
    let mut rows: HashMap<(bool, Vec<u8>, u64), SessionRow> = HashMap::new();
    for salt in (0..SALTS).filter(|&s| owned(s)) {
        let scan = salt_scan(salt, cols.restore_columns(), Some(before), Some(filter.clone()));
        scan_rows(&mut c, &cfg.table, &cols, scan, |row| {
            out.rows_scanned += 1;
            let Some(id) = row.id.clone() else { return Ok(()) };
            if owner(&row, &id, session.routing, peers)? != worker_index {
                return Ok(());
            }
            let key = (id.gap_based, id.session_id.clone(), id.opened_window);
            let newer = rows
                .get(&key)
                .is_none_or(|old| old.window.map(|w| w.0) < row.window.map(|w| w.0));
            if newer {
                rows.insert(key, row);
            }
            Ok(())
        })?;
    }
    // 3. Rebuild.
    for ((gap_based, sid, _), row) in rows {
        let bad = |why: String| HbaseError::BadRow {
            row: row.display_key(),
            reason: why,
        };
        let (window, window_ts) = row.window.ok_or_else(|| bad("no q:window".into()))?;
        if window >= resume {
            return Err(bad(format!(
                "version of window {window} read as of window {}",
                resume - 1
            )));
        }
        let closed = row.closed.ok_or_else(|| bad("no q:closed".into()))?;
        if !closed {
            let (state, state_ts) = row
                .state
                .as_ref()
                .ok_or_else(|| bad("open session without s:state (was emit_state on?)".into()))?;
            if *state_ts != window_ts {
                return Err(bad(format!(
                    "s:state is of timestamp {state_ts}, q:window of {window_ts}"
                )));
            }
            let s = Session::from_state(state).map_err(bad)?;
            store.restore_open(gap_based, s, resume);
            out.open += 1;
            continue;
        }
        if window + retain >= resume {
            out.pending_compactions.push((window, row.key.clone()));
        }
        if row.merged_into.is_some() || window + closed_windows < resume {
            continue;
        }
        let sid = String::from_utf8(sid).map_err(|_| bad("session id is not UTF-8".into()))?;
        if gap_based {
            let visitor = row.visitor_id.as_deref().ok_or_else(|| bad("no q:visitor_id".into()))?;
            let visitor = std::str::from_utf8(visitor).map_err(|_| bad("visitor id is not UTF-8".into()))?;
            let project = row.project_id.ok_or_else(|| bad("no q:project_id".into()))?;
            let (start, end) = (
                row.start.ok_or_else(|| bad("no q:start".into()))?,
                row.end.ok_or_else(|| bad("no q:end".into()))?,
            );
            store.restore_closed(Some((project, visitor, start, end)), &sid, window);
        } else {
            store.restore_closed(None, &sid, window);
        }
        out.closed += 1;
    }
    out.store = store;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_strings_quote_binary_values() {
        assert_eq!(filter_quote(b"a'b"), b"'a''b'".to_vec());
        let f = value_filter("s", "window", ">=", &[0, 1, b'\'']);
        assert_eq!(
            f,
            b"SingleColumnValueFilter('s', 'window', >=, 'binary:\x00\x01''', true, true)".to_vec()
        );
    }
}
