//! `sessionflow query`: project metrics and single-session lookups over SessionDB (or over an
//! event-per-cell table, for comparison).
//!
//! Aggregates run 16 prefix scans, one per salt bucket, over the project's key range
//! `[salt][project_id]` (from the window of `--from` on: a session that started at or after
//! `--from` opened no earlier than that window), reading only the columns the question needs.
//! A lookup scans the one or two salt buckets the id can hash to, with a server-side row
//! filter on the id. The scans of one question run side by side over a few connections
//! ([`Conns`], `--parallel`), and are folded in salt order, so answers do not depend on it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hbase_thrift::hbase::{TRowResult, TScan};
use sessionflow_operators::event::parse_event;
use sessionflow_operators::session::operator::key_hash;
use sessionflow_operators::sink::hbase::schema::{self, col, Columns, RowKey, SessionRow, SALTS};

use sessionflow_operators::sink::hbase::client::{self, Timeouts};

use crate::sessiondb::{self, HbaseClient, HbaseError};

/// Which table layout to query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// SessionDB: one row per session.
    Sessions,
    /// Event-per-cell: one row and cell per event (sessions are rebuilt at query time).
    Events,
}

/// Flags of `sessionflow query`.
#[derive(Args, Clone, Debug)]
pub struct QueryArgs {
    /// HBase Thrift1 server, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub hbase: String,
    /// Table to query.
    #[arg(long)]
    pub table: String,
    /// Data column family (snapshots; events of an event-per-cell table).
    #[arg(long = "hbase-family", default_value = schema::DATA_FAMILY)]
    pub family: String,
    /// Query column family of SessionDB (the columns aggregates read).
    #[arg(long = "hbase-query-family", default_value = schema::QUERY_FAMILY)]
    pub query_family: String,
    /// Table layout: `sessions` (SessionDB) or `events` (event-per-cell).
    #[arg(long, value_enum, default_value = "sessions")]
    pub layout: Layout,
    /// Project id (required for aggregates; narrows a lookup).
    #[arg(long)]
    pub project: Option<u64>,
    /// Only sessions exposed to this experiment id.
    #[arg(long)]
    pub experiment: Option<u64>,
    /// With --experiment: only this variation id.
    #[arg(long, requires = "experiment")]
    pub variation: Option<u64>,
    /// Only sessions that started at or after this time (ms since the Unix epoch).
    #[arg(long, value_name = "MS")]
    pub from: Option<i64>,
    /// Only sessions that started before this time (ms since the Unix epoch).
    #[arg(long, value_name = "MS")]
    pub to: Option<i64>,
    /// Count as conversions the sessions with an event of this name.
    #[arg(long, value_name = "NAME")]
    pub conversion_name: Option<String>,
    /// Look up one session by id instead (prints its snapshot JSON).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Event-per-cell lookups: the session's visitor, when known (narrows the scan).
    #[arg(long, value_name = "ID")]
    pub visitor: Option<String>,
    /// Window length W of the job that wrote the table (for --from).
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_duration_ms)]
    pub window: u64,
    /// Session gap (event-per-cell: rebuilds gap-based sessions at query time).
    #[arg(long, default_value = "30m", value_parser = crate::config::parse_duration_ms)]
    pub gap: u64,
    /// Read/write timeout of each call, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
    /// Scans run side by side, one connection each (count; 1 = one after another).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
}

/// A few connections to one Thrift1 server, to run a question's scans side by side: one
/// connection carries one call at a time, and the server serves each on its own handler
/// thread. A connection idle for a while is reopened first (the server drops connections
/// idle for 60 s).
pub struct Conns {
    addr: String,
    timeouts: Timeouts,
    pool: Vec<HbaseClient>,
}

/// Reopen a pooled connection idle for longer than this before using it.
const REOPEN_IDLE: Duration = Duration::from_secs(45);

impl Conns {
    /// Opens `n` connections (at least one) to `addr`.
    pub fn connect(addr: &str, timeouts: Timeouts, n: usize) -> Result<Conns, HbaseError> {
        let pool = (0..n.max(1))
            .map(|_| HbaseClient::connect(addr, timeouts))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Conns {
            addr: addr.to_string(),
            timeouts,
            pool,
        })
    }

    /// The first connection (for single calls).
    pub fn first(&mut self) -> Result<&mut HbaseClient, HbaseError> {
        self.refresh(0)?;
        Ok(&mut self.pool[0])
    }

    fn refresh(&mut self, i: usize) -> Result<(), HbaseError> {
        if self.pool[i].idle() > REOPEN_IDLE {
            self.pool[i] = HbaseClient::connect(&self.addr, self.timeouts)?;
        }
        Ok(())
    }

    /// Runs every scan of `scans` to its end (`batch` rows per round trip), one per connection
    /// at a time, and returns each scan's rows, in the order of `scans`.
    pub fn scan_all(&mut self, table: &str, scans: Vec<TScan>, batch: i32) -> Result<Vec<Vec<TRowResult>>, HbaseError> {
        for i in 0..self.pool.len() {
            self.refresh(i)?;
        }
        let n = self.pool.len().min(scans.len()).max(1);
        // Scan `k` goes to connection `k % n`.
        let mut jobs: Vec<Vec<(usize, TScan)>> = (0..n).map(|_| Vec::new()).collect();
        for (k, scan) in scans.into_iter().enumerate() {
            jobs[k % n].push((k, scan));
        }
        let run = |c: &mut HbaseClient, jobs: Vec<(usize, TScan)>| {
            let mut out = Vec::with_capacity(jobs.len());
            for (k, scan) in jobs {
                let mut rows = Vec::new();
                c.scan(table, scan, batch, |r| {
                    rows.push(r);
                    true
                })?;
                out.push((k, rows));
            }
            Ok::<_, HbaseError>(out)
        };
        let mut done: Vec<(usize, Vec<TRowResult>)> = Vec::new();
        if n == 1 {
            done = run(&mut self.pool[0], jobs.pop().unwrap_or_default())?;
        } else {
            let results: Vec<Result<_, HbaseError>> = std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .pool
                    .iter_mut()
                    .zip(jobs)
                    .map(|(c, j)| s.spawn(move || run(c, j)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(HbaseError::Server {
                                op: "scan",
                                message: "a scan thread panicked".into(),
                            })
                        })
                    })
                    .collect()
            });
            for r in results {
                done.extend(r?);
            }
        }
        done.sort_unstable_by_key(|(k, _)| *k);
        Ok(done.into_iter().map(|(_, rows)| rows).collect())
    }
}

/// What an aggregate query asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Question {
    /// Project.
    pub project: u64,
    /// Experiment and optional variation.
    pub experiment: Option<(u64, Option<u64>)>,
    /// Session start range `[from, to)`, ms.
    pub from: Option<i64>,
    /// See `from`.
    pub to: Option<i64>,
    /// Conversion event name.
    pub conversion: Option<String>,
}

/// An aggregate answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    /// Sessions matching.
    pub sessions: u64,
    /// Distinct visitors among them.
    pub visitors: u64,
    /// Of them, sessions with an event named like the conversion.
    pub conversions: u64,
    /// Revenue sum, minor units.
    pub revenue: i128,
    /// Rows read from HBase.
    pub rows: u64,
    /// Cell bytes read (values, keys and column names).
    pub bytes: u64,
}

impl Answer {
    /// Average revenue per session (minor units).
    pub fn avg_revenue(&self) -> f64 {
        if self.sessions == 0 {
            0.0
        } else {
            self.revenue as f64 / self.sessions as f64
        }
    }
}

fn experiment_matches(pairs: &[(u64, u64)], want: Option<(u64, Option<u64>)>) -> bool {
    match want {
        None => true,
        Some((x, v)) => pairs.iter().any(|&(px, pv)| px == x && v.is_none_or(|v| v == pv)),
    }
}

fn in_range(start: i64, q: &Question) -> bool {
    q.from.is_none_or(|f| start >= f) && q.to.is_none_or(|t| start < t)
}

fn prefix_scan(salt: u8, project: u64, from_window: u64, columns: Vec<Vec<u8>>, filter: Option<Vec<u8>>) -> TScan {
    TScan {
        start_row: Some(schema::project_start(salt, project, from_window)),
        stop_row: Some(schema::project_stop(salt, project)),
        timestamp: None,
        columns: Some(columns),
        caching: Some(2000),
        filter_string: filter,
        batch_size: None,
        sort_columns: None,
        reversed: None,
        cache_blocks: None,
    }
}

/// The server-side filter for the question's experiment and time range, if any: the region
/// server then drops the rows that cannot match, so they never cross the Thrift gateway (the
/// per-row cost of a query). It may keep more rows than match (the client checks every row
/// exactly), never fewer: `q:experiments` is `x:v` pairs joined by commas, and `q:start` an
/// 8-byte big-endian time, which compares bytewise like the number when it is not negative.
fn pushed_down(cols: &Columns, q: &Question) -> Option<Vec<u8>> {
    let fam = &cols.query_family;
    let mut filters: Vec<Vec<u8>> = Vec::new();
    if let Some((x, v)) = q.experiment {
        let pair = match v {
            Some(v) => format!("{x}:{v}(,|$)"),
            None => format!("{x}:"),
        };
        filters.push(sessiondb::regex_filter(fam, col::EXPERIMENTS, &format!("(^|,){pair}")));
    }
    if let Some(from) = q.from.filter(|f| *f > 0) {
        filters.push(sessiondb::value_filter(fam, col::START, ">=", &from.to_be_bytes()));
    }
    if let Some(to) = q.to.filter(|t| *t > 0) {
        filters.push(sessiondb::value_filter(fam, col::START, "<", &to.to_be_bytes()));
    }
    filters.into_iter().reduce(|mut a, b| {
        a.extend_from_slice(b" AND ");
        a.extend_from_slice(&b);
        a
    })
}

/// Aggregates over SessionDB.
pub fn sessions_aggregate(
    c: &mut Conns,
    table: &str,
    cols: &Columns,
    window_ms: u64,
    q: &Question,
) -> Result<Answer, HbaseError> {
    let mut columns = vec![cols.visitor_id.clone(), cols.revenue.clone(), cols.merged_into.clone()];
    if q.experiment.is_some() {
        columns.push(cols.experiments.clone());
    }
    if q.from.is_some() || q.to.is_some() {
        columns.push(cols.start.clone());
    }
    if q.conversion.is_some() {
        columns.push(cols.names.clone());
    }
    let from_window = q
        .from
        .map_or(0, |f| if f <= 0 { 0 } else { f as u64 / window_ms.max(1) });
    let mut a = Answer::default();
    let mut visitors: HashSet<Vec<u8>> = HashSet::new();
    let filter = pushed_down(cols, q);
    let scans = (0..SALTS)
        .map(|salt| prefix_scan(salt, q.project, from_window, columns.clone(), filter.clone()))
        .collect();
    for rows in c.scan_all(table, scans, 1000)? {
        for r in rows {
            let row = SessionRow::decode(cols, r)?;
            a.rows += 1;
            a.bytes += row.key.len() as u64 + 64;
            if row.merged_into.is_some() || row.id.is_none() {
                continue;
            }
            if q.experiment.is_some() && !experiment_matches(row.experiments.as_deref().unwrap_or(&[]), q.experiment) {
                continue;
            }
            if (q.from.is_some() || q.to.is_some()) && !row.start.is_some_and(|s| in_range(s, q)) {
                continue;
            }
            a.sessions += 1;
            a.revenue += row.revenue.unwrap_or(0);
            if let Some(name) = &q.conversion {
                // A table written before `q:names` existed cannot answer this: say so rather
                // than count no conversions.
                let names = row.names.as_ref().ok_or_else(|| HbaseError::BadRow {
                    row: row.display_key(),
                    reason: "no q:names column (written by an older sessionflow): conversions unavailable".into(),
                })?;
                if names.iter().any(|n| n == name) {
                    a.conversions += 1;
                }
            }
            if let Some(v) = row.visitor_id {
                visitors.insert(v);
            }
        }
    }
    a.visitors = visitors.len() as u64;
    Ok(a)
}

/// A session rebuilt from events at query time.
#[derive(Default)]
struct Built {
    visitor: Vec<u8>,
    start: i64,
    end: i64,
    revenue: i128,
    experiments: Vec<(u64, u64)>,
    converted: bool,
}

/// Aggregates over an event-per-cell table: every event of the project is read and parsed,
/// and sessions are rebuilt (by client id, or by visitor and gap) before filtering.
pub fn events_aggregate(
    c: &mut Conns,
    table: &str,
    family: &str,
    gap_ms: u64,
    q: &Question,
) -> Result<Answer, HbaseError> {
    let column = schema::column(family, col::EVENT);
    let mut a = Answer::default();
    let mut sessions: HashMap<Vec<u8>, Built> = HashMap::new();
    // Gap sessions: rows come sorted by (visitor, time) within a salt bucket.
    let mut gap_open: Option<(Vec<u8>, usize)> = None;
    let mut gap_done: Vec<Built> = Vec::new();
    let scans = (0..SALTS)
        .map(|salt| prefix_scan(salt, q.project, 0, vec![column.clone()], None))
        .collect();
    for rows in c.scan_all(table, scans, 2000)? {
        gap_open = None;
        for r in rows {
            {
                a.rows += 1;
                let key_len = r.row.as_ref().map_or(0, Vec::len);
                let Some(cell) = r.columns.and_then(|m| m.into_values().next()) else {
                    continue;
                };
                let value = cell.value.unwrap_or_default();
                a.bytes += (key_len + value.len() + 16) as u64;
                let Ok(e) = parse_event(&value) else { continue };
                let fold = |b: &mut Built| {
                    b.start = b.start.min(e.timestamp);
                    b.end = b.end.max(e.timestamp);
                    b.revenue += e.revenue.unwrap_or(0) as i128;
                    for x in e.experiments.iter().flatten() {
                        let p = (x.experiment_id, x.variation_id);
                        if !b.experiments.contains(&p) {
                            b.experiments.push(p);
                        }
                    }
                    if q.conversion.is_some() && e.name.as_deref() == q.conversion.as_deref() {
                        b.converted = true;
                    }
                };
                let fresh = || Built {
                    visitor: e.visitor_id.as_bytes().to_vec(),
                    start: i64::MAX,
                    end: i64::MIN,
                    ..Built::default()
                };
                match &e.session_id {
                    Some(sid) => fold(sessions.entry(sid.as_bytes().to_vec()).or_insert_with(fresh)),
                    None => {
                        let same = gap_open.as_ref().is_some_and(|(v, i)| {
                            v.as_slice() == e.visitor_id.as_bytes()
                                && e.timestamp <= gap_done[*i].end.saturating_add(gap_ms as i64)
                        });
                        if !same {
                            gap_done.push(fresh());
                            gap_open = Some((e.visitor_id.as_bytes().to_vec(), gap_done.len() - 1));
                        }
                        if let Some((_, i)) = &gap_open {
                            fold(&mut gap_done[*i]);
                        }
                    }
                }
            }
        }
    }
    let _ = gap_open;
    let mut visitors: HashSet<Vec<u8>> = HashSet::new();
    for b in sessions.into_values().chain(gap_done) {
        if !experiment_matches(&b.experiments, q.experiment) || !in_range(b.start, q) {
            continue;
        }
        a.sessions += 1;
        a.revenue += b.revenue;
        a.conversions += u64::from(b.converted);
        visitors.insert(b.visitor);
    }
    a.visitors = visitors.len() as u64;
    Ok(a)
}

/// A server-side pre-filter for session rows of id `sid`: the key ends with
/// `<id>\x00[gs]`. HBase decodes the key as UTF-8 for the regex, so the id's characters are
/// written as `\x{code point}` and nothing is assumed about the binary prefix (which may decode
/// to any number of characters); a longer id ending like `sid` also passes, so callers compare
/// the decoded key's id exactly.
fn id_row_filter(sid: &str) -> Vec<u8> {
    let mut re = String::from("(?s)");
    for ch in sid.chars() {
        re.push_str(&format!("\\x{{{:x}}}", ch as u32));
    }
    re.push_str("\\x00[gs]$");
    let mut f = b"RowFilter(=, ".to_vec();
    f.extend_from_slice(&crate::sessiondb::filter_quote(format!("regexstring:{re}").as_bytes()));
    f.push(b')');
    f
}

/// Every SessionDB row of session `sid` (several when the id was reused), as
/// `(row key, snapshot JSON)`, oldest first.
pub fn sessions_lookup(
    c: &mut Conns,
    table: &str,
    cols: &Columns,
    project: Option<u64>,
    sid: &str,
) -> Result<Vec<(RowKey, Vec<u8>)>, HbaseError> {
    let mut salts = vec![(key_hash(Some(sid), 0, "") % SALTS as u64) as u8];
    if let (Some(p), Some((visitor, _))) = (project, sid.rsplit_once('@')) {
        salts.push((key_hash(None, p, visitor) % SALTS as u64) as u8);
    }
    if project.is_none() && sid.contains('@') {
        // A gap-based id hashes with its project: try every bucket.
        salts = (0..SALTS).collect();
    }
    salts.sort_unstable();
    salts.dedup();
    let scans = salts
        .into_iter()
        .map(|salt| {
            let (start, stop) = match project {
                Some(p) => (schema::project_start(salt, p, 0), schema::project_stop(salt, p)),
                None => (vec![salt], vec![salt + 1]),
            };
            TScan {
                start_row: Some(start),
                stop_row: Some(stop),
                timestamp: None,
                columns: Some(vec![cols.snapshot.clone()]),
                caching: Some(100),
                filter_string: Some(id_row_filter(sid)),
                batch_size: None,
                sort_columns: None,
                reversed: None,
                cache_blocks: None,
            }
        })
        .collect();
    let mut found = Vec::new();
    for rows in c.scan_all(table, scans, 100)? {
        for r in rows {
            let row = SessionRow::decode(cols, r)?;
            if let (Some(id), Some(snap)) = (row.id, row.snapshot) {
                if id.session_id == sid.as_bytes() {
                    found.push((id, snap));
                }
            }
        }
    }
    found.sort_by_key(|(id, _)| id.opened_window);
    Ok(found)
}

/// Every event of session `sid` in an event-per-cell table (the project's, or only the
/// visitor's rows when `visitor` is known), as event JSON lines sorted by time.
pub fn events_lookup(
    c: &mut Conns,
    table: &str,
    family: &str,
    project: u64,
    visitor: Option<&str>,
    sid: &str,
) -> Result<Vec<Vec<u8>>, HbaseError> {
    let column = schema::column(family, col::EVENT);
    let mut found: BTreeMap<(i64, String), Vec<u8>> = BTreeMap::new();
    let ranges: Vec<(Vec<u8>, Vec<u8>)> = match visitor {
        Some(v) => {
            let mut start = schema::event_row_key(project, v, 0, "");
            start.truncate(start.len() - 8);
            let mut stop = start.clone();
            stop.push(0xff);
            vec![(start, stop)]
        }
        None => (0..SALTS)
            .map(|s| (schema::project_start(s, project, 0), schema::project_stop(s, project)))
            .collect(),
    };
    let (gap_visitor, gap_t) = match sid.rsplit_once('@') {
        Some((v, t)) => (Some(v.to_string()), t.parse::<i64>().ok()),
        None => (None, None),
    };
    let scans = ranges
        .into_iter()
        .map(|(start, stop)| TScan {
            start_row: Some(start),
            stop_row: Some(stop),
            timestamp: None,
            columns: Some(vec![column.clone()]),
            caching: Some(2000),
            filter_string: None,
            batch_size: None,
            sort_columns: None,
            reversed: None,
            cache_blocks: None,
        })
        .collect();
    for rows in c.scan_all(table, scans, 2000)? {
        for r in rows {
            let Some(value) = r.columns.and_then(|m| m.into_values().next()).and_then(|c| c.value) else {
                continue;
            };
            if let Ok(e) = parse_event(&value) {
                let hit = match &e.session_id {
                    Some(s) => s == sid,
                    // Gap sessions are named `visitor@t`: the visitor's id-less events from t on
                    // (the gap split is left to the reader of this design).
                    None => {
                        gap_visitor.as_deref() == Some(e.visitor_id.as_str()) && gap_t.is_some_and(|t| e.timestamp >= t)
                    }
                };
                if hit {
                    found.insert((e.timestamp, e.event_id.to_string()), value);
                }
            }
        }
    }
    Ok(found.into_values().collect())
}

/// Runs the command.
pub fn run(args: QueryArgs) -> Result<(), String> {
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        io: Duration::from_millis(args.timeout_ms),
    };
    let mut c = Conns::connect(&args.hbase, timeouts, args.parallel.into()).map_err(|e| e.to_string())?;
    let families: Vec<&str> = match args.layout {
        Layout::Sessions => vec![&args.family, &args.query_family],
        Layout::Events => vec![&args.family],
    };
    match c
        .first()
        .and_then(|f| f.families(&args.table))
        .map_err(|e| e.to_string())?
    {
        None => return Err(format!("HBase table {:?} does not exist", args.table)),
        Some(found) => {
            client::family_versions(&args.table, &found, &families).map_err(|e| e.to_string())?;
        }
    }
    let cols = Columns::new(&args.family, &args.query_family);
    let started = Instant::now();
    if let Some(sid) = &args.session {
        let docs: Vec<Vec<u8>> = match args.layout {
            Layout::Sessions => sessions_lookup(&mut c, &args.table, &cols, args.project, sid)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(_, s)| s)
                .collect(),
            Layout::Events => {
                let p = args
                    .project
                    .ok_or("--project is required to look a session up in an event-per-cell table")?;
                events_lookup(&mut c, &args.table, &args.family, p, args.visitor.as_deref(), sid)
                    .map_err(|e| e.to_string())?
            }
        };
        let latency = started.elapsed();
        if docs.is_empty() {
            println!("no session {sid:?} in {}", args.table);
        }
        for d in &docs {
            match serde_json::from_slice::<serde_json::Value>(d) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                Err(_) => println!("{}", String::from_utf8_lossy(d)),
            }
        }
        println!(
            "({} {} in {:.1} ms)",
            docs.len(),
            if args.layout == Layout::Sessions {
                "session row(s)"
            } else {
                "event(s)"
            },
            latency.as_secs_f64() * 1e3
        );
        return Ok(());
    }
    let project = args
        .project
        .ok_or("--project is required (or --session to look one session up)")?;
    let q = Question {
        project,
        experiment: args.experiment.map(|x| (x, args.variation)),
        from: args.from,
        to: args.to,
        conversion: args.conversion_name.clone(),
    };
    let a = match args.layout {
        Layout::Sessions => sessions_aggregate(&mut c, &args.table, &cols, args.window, &q),
        Layout::Events => events_aggregate(&mut c, &args.table, &args.family, args.gap, &q),
    }
    .map_err(|e| e.to_string())?;
    let latency = started.elapsed();
    print!("{}", render(&args, &q, &a, latency));
    Ok(())
}

fn render(args: &QueryArgs, q: &Question, a: &Answer, latency: std::time::Duration) -> String {
    let mut filter = format!("project {}", q.project);
    if let Some((x, v)) = q.experiment {
        filter.push_str(&format!(", experiment {x}"));
        if let Some(v) = v {
            filter.push_str(&format!(" variation {v}"));
        }
    }
    if q.from.is_some() || q.to.is_some() {
        filter.push_str(&format!(
            ", start in [{}, {})",
            q.from.map_or("-inf".into(), |f| f.to_string()),
            q.to.map_or("+inf".into(), |t| t.to_string())
        ));
    }
    let conv = match &q.conversion {
        Some(n) => format!("conversions ({n})"),
        None => "conversions".into(),
    };
    let rows = [
        ("table", format!("{} ({:?})", args.table, args.layout).to_lowercase()),
        ("filter", filter),
        ("sessions", a.sessions.to_string()),
        ("unique visitors", a.visitors.to_string()),
        (
            conv.as_str(),
            if q.conversion.is_some() {
                a.conversions.to_string()
            } else {
                "-".into()
            },
        ),
        ("avg revenue / session", format!("{:.2}", a.avg_revenue())),
        ("rows read", a.rows.to_string()),
        ("query latency", format!("{:.1} ms", latency.as_secs_f64() * 1e3)),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<w$}  {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_filters_escape_every_byte() {
        let f = id_row_filter("a'\u{0}ü");
        assert_eq!(
            f,
            b"RowFilter(=, 'regexstring:(?s)\\x{61}\\x{27}\\x{0}\\x{fc}\\x00[gs]$')".to_vec()
        );
    }

    #[test]
    fn experiment_and_range_filters() {
        assert!(experiment_matches(&[(1, 2)], Some((1, None))));
        assert!(!experiment_matches(&[(1, 2)], Some((1, Some(3)))));
        let q = Question {
            from: Some(10),
            to: Some(20),
            ..Question::default()
        };
        assert!(in_range(10, &q) && !in_range(20, &q));
    }

    #[test]
    fn experiment_and_range_filters_are_pushed_to_the_region_server() {
        let cols = Columns::default();
        let q = Question {
            project: 1,
            ..Question::default()
        };
        assert_eq!(pushed_down(&cols, &q), None);
        let q = Question {
            project: 1,
            experiment: Some((11, Some(2))),
            from: Some(0x27),
            ..Question::default()
        };
        let mut want =
            b"SingleColumnValueFilter('q', 'experiments', =, 'regexstring:(^|,)11:2(,|$)', true, true) AND ".to_vec();
        // The time's bytes, its quote byte (0x27) doubled.
        want.extend_from_slice(b"SingleColumnValueFilter('q', 'start', >=, 'binary:\0\0\0\0\0\0\0''', true, true)");
        assert_eq!(pushed_down(&cols, &q), Some(want));
        let q = Question {
            project: 1,
            experiment: Some((11, None)),
            to: Some(-5),
            ..Question::default()
        };
        let want = b"SingleColumnValueFilter('q', 'experiments', =, 'regexstring:(^|,)11:', true, true)".to_vec();
        assert_eq!(pushed_down(&cols, &q), Some(want));
    }
}
