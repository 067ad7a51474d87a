//! SessionDB against event-per-cell on the same real HBase with the same generated data:
//! storage and query latency (p50, p99) for the same questions.
//!
//! `cargo bench --bench sessiondb` (needs `scripts/services.sh up hbase`; HBASE_THRIFT, default
//! 127.0.0.1:9090; skips with a message when HBase is unreachable). `BENCH_QUICK=1`: 30k
//! events and fewer repetitions. `BENCH_EVENTS=N` overrides the event count. `BENCH_KEEP=1`
//! keeps both tables for `sessionflow query` (the next run of the bench drops them).
//!
//! Storage is reported three ways for each table: the bytes a full scan returns (latest
//! version of every cell: row key + column + value), the same as HBase `KeyValue`s (what an
//! HFile stores per cell, before block overhead), and HBase's store-file size after a flush and
//! a real major compaction (`scripts/services.sh compact`, Java Admin API). Queries run their
//! scans `BENCH_PARALLEL` (default 8) at a time, for both layouts alike.
//! Both tables get the sink's default compression (GZ); `BENCH_COMPRESSION=NONE` (or another
//! HBase algorithm) overrides it for both.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbase_thrift::hbase::TScan;
use sessionflow::commands::query::{self, Question};
use sessionflow::config::JobConfig;
use sessionflow::pipeline::{self, Attach, Outputs};
use sessionflow::sessiondb::{schema, HbaseClient, HbaseEvents, HbaseSessions, HbaseSink, HbaseSinkConfig, SinkMode};
use sessionflow_operators::session::{SessionConfig, Snapshot};
use sessionflow_operators::sink::hbase::client::Timeouts;
use sessionflow_operators::source::memory::MemoryReader;

type Res<T> = Result<T, String>;

fn thrift() -> String {
    std::env::var("HBASE_THRIFT").unwrap_or_else(|_| "127.0.0.1:9090".into())
}

fn connect() -> Res<HbaseClient> {
    let t = Timeouts {
        connect: Duration::from_secs(3),
        io: Duration::from_secs(300),
    };
    let mut c = HbaseClient::connect(&thrift(), t).map_err(|e| e.to_string())?;
    c.table_names().map_err(|e| e.to_string())?;
    Ok(c)
}

fn job() -> JobConfig {
    JobConfig::for_session(SessionConfig {
        emit_state: true,
        ..SessionConfig::default()
    })
}

fn generate(events: u64) -> Res<Vec<Vec<Vec<u8>>>> {
    let dir = std::env::temp_dir().join(format!("sf-bench-{}", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sessionflow"))
        .args([
            "generate",
            "--events",
            &events.to_string(),
            "--partitions",
            "4",
            "--seed",
            "42",
            "--out-dir",
        ])
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("generate failed".into());
    }
    let mut out = Vec::new();
    for p in 0..4 {
        let text = std::fs::read(dir.join(format!("p{p}.jsonl"))).map_err(|e| e.to_string())?;
        out.push(
            text.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

struct Collect(Rc<RefCell<Vec<Snapshot>>>);

impl Attach<Snapshot> for Collect {
    fn attach<'s>(
        self: Box<Self>,
        stream: timely::dataflow::StreamVec<'s, u64, Snapshot>,
    ) -> timely::dataflow::StreamVec<'s, u64, ()> {
        use timely::dataflow::operators::vec::Map;
        use timely::dataflow::operators::Inspect;
        let seen = self.0;
        stream.inspect(move |s| seen.borrow_mut().push(s.clone())).map(|_| ())
    }
}

/// Loads `lines` through the job into `cfg.table`; returns the wall time and (sessions mode)
/// every final snapshot's `(project, session id, visitor)`.
fn load(lines: Arc<Vec<Vec<Vec<u8>>>>, cfg: HbaseSinkConfig) -> (Duration, Vec<(u64, String, String)>) {
    let started = Instant::now();
    let finals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let f2 = Arc::clone(&finals);
    let job = job();
    timely::execute_directly(move |worker| {
        let reader = MemoryReader::new(lines, 0, 1);
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut outputs = Outputs {
            no_file_sinks: true,
            ..Outputs::default()
        };
        let mode = cfg.mode;
        let sink = HbaseSink::new(cfg);
        match mode {
            SinkMode::Sessions => {
                outputs.snapshot_sinks.push(Box::new(HbaseSessions(sink)));
                outputs.snapshot_sinks.push(Box::new(Collect(Rc::clone(&seen))));
            }
            SinkMode::Events => outputs.event_sinks.push(Box::new(HbaseEvents(sink))),
        }
        let built = pipeline::build(worker, &job, reader, outputs);
        pipeline::run_to_completion(worker, &built, Duration::from_secs(3600), |_| {});
        if let Ok(mut f) = f2.lock() {
            for s in seen.borrow().iter().filter(|s| s.closed && s.merged_into.is_none()) {
                f.push((s.project_id, s.session_id.to_string(), s.visitor_id.to_string()));
            }
        }
    });
    let v = finals.lock().map(|f| f.clone()).unwrap_or_default();
    (started.elapsed(), v)
}

#[derive(Default, Debug, Clone, Copy)]
struct Storage {
    rows: u64,
    cells: u64,
    scan_bytes: u64,
    keyvalue_bytes: u64,
}

/// Latest versions of every cell of the table's rows below the meta row.
fn storage(c: &mut HbaseClient, table: &str) -> Res<Storage> {
    let mut s = Storage::default();
    let scan = TScan {
        start_row: Some(vec![0]),
        stop_row: Some(vec![0xff]),
        timestamp: None,
        columns: None,
        caching: Some(1000),
        filter_string: None,
        batch_size: None,
        sort_columns: None,
        reversed: None,
        cache_blocks: Some(false),
    };
    c.scan(table, scan, 1000, |r| {
        let key = r.row.as_ref().map_or(0, Vec::len) as u64;
        s.rows += 1;
        for (col, cell) in r.columns.unwrap_or_default() {
            let v = cell.value.as_ref().map_or(0, Vec::len) as u64;
            s.cells += 1;
            s.scan_bytes += key + col.len() as u64 + v;
            // KeyValue: key length 4 + value length 4 + row length 2 + row + family length 1
            // + family:qualifier (less the colon) + timestamp 8 + type 1 + value.
            s.keyvalue_bytes += 4 + 4 + 2 + key + 1 + (col.len() as u64 - 1) + 8 + 1 + v;
        }
        true
    })
    .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Store-file bytes of tables after a flush and a real major compaction, as HBase accounts
/// them (whole MB per region): `scripts/services.sh compact` (Java Admin API; Thrift1's
/// `majorCompact` runs a minor compaction, which left every overwritten version on disk in
/// earlier runs of this bench). `None` when the script fails (HBase not managed by it).
fn disk_bytes(tables: &[&str]) -> Option<Vec<u64>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("compact")
        .args(tables)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("services.sh compact failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    tables
        .iter()
        .map(|t| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(*t))
                .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("store_file_bytes=")))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn time<T>(f: impl FnOnce() -> Res<T>) -> Res<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed().as_secs_f64() * 1e3, v))
}

fn main() -> Res<()> {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let events: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 30_000 } else { 200_000 });
    let reps = if quick { 3 } else { 7 };
    let mut c = match connect() {
        Ok(c) => c,
        Err(e) => {
            println!("sessiondb bench skipped: HBase Thrift server unreachable at {} ({e}); start it with `scripts/services.sh up hbase`", thrift());
            return Ok(());
        }
    };
    // Tables left by an interrupted run of this bench (their process is gone).
    for name in c.table_names().map_err(|e| e.to_string())? {
        let name = String::from_utf8_lossy(&name).into_owned();
        let pid = name
            .strip_prefix("bench_sessions_")
            .or_else(|| name.strip_prefix("bench_events_"));
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            c.drop_table(&name).map_err(|e| e.to_string())?;
        }
    }
    let lines = Arc::new(generate(events)?);
    let session = job().session;
    let tag = std::process::id();
    let (ts, te) = (format!("bench_sessions_{tag}"), format!("bench_events_{tag}"));
    let compression = std::env::var("BENCH_COMPRESSION").unwrap_or_else(|_| HbaseSinkConfig::default().compression);
    let mut tables = Vec::new();
    for (t, mode) in [(&ts, SinkMode::Sessions), (&te, SinkMode::Events)] {
        c.drop_table(t).map_err(|e| e.to_string())?;
        let cfg = HbaseSinkConfig {
            thrift: thrift(),
            table: t.clone(),
            mode,
            window_ms: session.window_ms,
            gap_ms: session.gap_ms,
            compression: compression.clone(),
            ..HbaseSinkConfig::default()
        };
        cfg.prepare().map_err(|e| e.to_string())?;
        tables.push(cfg);
    }
    println!(
        "sessiondb bench: {events} generated lines, 4 partitions, seed 42, HBase at {}, compression {compression}",
        thrift()
    );
    let (load_s, finals) = load(Arc::clone(&lines), tables[0].clone());
    let (load_e, _) = load(Arc::clone(&lines), tables[1].clone());
    println!(
        "load (one worker, through the job): SessionDB {:.1} s, event-per-cell {:.1} s",
        load_s.as_secs_f64(),
        load_e.as_secs_f64()
    );

    // The Thrift server drops connections idle for 60 s: a long load outlasts this one.
    c = connect()?;
    let st_s = storage(&mut c, &ts)?;
    c = connect()?;
    let st_e = storage(&mut c, &te)?;
    let disk = disk_bytes(&[&ts, &te]);
    c = connect()?;
    let mb = |b: u64| b as f64 / 1e6;
    println!("\nstorage                     SessionDB   event-per-cell   ratio");
    println!(
        "rows                      {:>11} {:>16}   {:>5.1}x",
        st_s.rows,
        st_e.rows,
        st_e.rows as f64 / st_s.rows.max(1) as f64
    );
    println!(
        "cells                     {:>11} {:>16}   {:>5.1}x",
        st_s.cells,
        st_e.cells,
        st_e.cells as f64 / st_s.cells.max(1) as f64
    );
    println!(
        "full-scan bytes (MB)      {:>11.2} {:>16.2}   {:>5.2}x",
        mb(st_s.scan_bytes),
        mb(st_e.scan_bytes),
        st_e.scan_bytes as f64 / st_s.scan_bytes.max(1) as f64
    );
    println!(
        "KeyValue bytes (MB)       {:>11.2} {:>16.2}   {:>5.2}x",
        mb(st_s.keyvalue_bytes),
        mb(st_e.keyvalue_bytes),
        st_e.keyvalue_bytes as f64 / st_s.keyvalue_bytes.max(1) as f64
    );
    match disk {
        Some(d) => println!(
            "HFiles after major compaction (MB) {:>6.0} {:>16.0}   {:>5.2}x",
            mb(d[0]),
            mb(d[1]),
            d[1] as f64 / d[0].max(1) as f64
        ),
        None => println!("HFiles after major compaction: not measured (scripts/services.sh compact failed)"),
    }

    // The questions: the 5 biggest projects; for each the plain aggregate, with a conversion
    // name, and with an experiment variation seen in that project; plus 20 session lookups.
    let mut by_project: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for (p, s, v) in &finals {
        by_project.entry(*p).or_default().push((s.clone(), v.clone()));
    }
    let mut projects: Vec<(usize, u64)> = by_project.iter().map(|(p, v)| (v.len(), *p)).collect();
    projects.sort_unstable_by(|a, b| b.cmp(a));
    let projects: Vec<u64> = projects.iter().take(5).map(|x| x.1).collect();
    let mut questions: Vec<(String, Question)> = Vec::new();
    for &p in &projects {
        questions.push((
            "aggregate".into(),
            Question {
                project: p,
                ..Question::default()
            },
        ));
        questions.push((
            "aggregate + conversion".into(),
            Question {
                project: p,
                conversion: Some("purchase".into()),
                ..Question::default()
            },
        ));
        let exp = experiment_of(&mut c, &ts, p)?;
        if let Some((x, v)) = exp {
            questions.push((
                "aggregate + experiment".into(),
                Question {
                    project: p,
                    experiment: Some((x, Some(v))),
                    ..Question::default()
                },
            ));
        }
    }
    // Both layouts run their scans over the same connections, `BENCH_PARALLEL` at a time
    // (default 8, as `sessionflow query --parallel`).
    let width: usize = std::env::var("BENCH_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let t = Timeouts {
        connect: Duration::from_secs(3),
        io: Duration::from_secs(300),
    };
    let mut qc = query::Conns::connect(&thrift(), t, width).map_err(|e| e.to_string())?;
    let cols = tables[0].columns();
    let mut lat: HashMap<&str, (Vec<f64>, Vec<f64>)> = HashMap::new();
    let mut mismatches = 0;
    for round in 0..reps {
        for (kind, q) in &questions {
            // Each layout goes first in every other round: neither always runs right after
            // the other's garbage (the event-per-cell scans leave the Thrift server's heap
            // full) or always on the warmer caches.
            let s = |qc: &mut query::Conns| {
                time(|| query::sessions_aggregate(qc, &ts, &cols, session.window_ms, q).map_err(|e| e.to_string()))
            };
            let e = |qc: &mut query::Conns| {
                time(|| query::events_aggregate(qc, &te, "s", session.gap_ms, q).map_err(|e| e.to_string()))
            };
            let ((a_ms, a), (b_ms, b)) = if round % 2 == 0 {
                let a = s(&mut qc)?;
                (a, e(&mut qc)?)
            } else {
                let b = e(&mut qc)?;
                (s(&mut qc)?, b)
            };
            if (a.sessions, a.conversions) != (b.sessions, b.conversions) {
                mismatches += 1;
            }
            let e = lat.entry(kind.as_str()).or_default();
            e.0.push(a_ms);
            e.1.push(b_ms);
        }
    }
    let lookups: Vec<(u64, String, String)> = finals
        .iter()
        .step_by((finals.len() / 20).max(1))
        .take(20)
        .cloned()
        .collect();
    for _ in 0..reps {
        for (p, sid, visitor) in &lookups {
            let (a_ms, a) =
                time(|| query::sessions_lookup(&mut qc, &ts, &cols, Some(*p), sid).map_err(|e| e.to_string()))?;
            let (b_ms, b) =
                time(|| query::events_lookup(&mut qc, &te, "s", *p, Some(visitor), sid).map_err(|e| e.to_string()))?;
            let (c_ms, _) = time(|| query::events_lookup(&mut qc, &te, "s", *p, None, sid).map_err(|e| e.to_string()))?;
            if a.is_empty() || b.is_empty() {
                mismatches += 1;
            }
            let e = lat.entry("lookup (event-per-cell knows the visitor)").or_default();
            e.0.push(a_ms);
            e.1.push(b_ms);
            let e = lat.entry("lookup (project scan)").or_default();
            e.0.push(a_ms);
            e.1.push(c_ms);
        }
    }
    println!("\nquery latency, ms (5 biggest projects, {reps} rounds, {width} scans at a time)   SessionDB p50 / p99   event-per-cell p50 / p99   ratio p50 / p99");
    let mut kinds: Vec<_> = lat.keys().copied().collect();
    kinds.sort_unstable();
    for k in kinds {
        let (mut a, mut b) = lat.remove(k).unwrap_or_default();
        let (a50, a99, b50, b99) = (
            pct(&mut a, 50.0),
            pct(&mut a, 99.0),
            pct(&mut b, 50.0),
            pct(&mut b, 99.0),
        );
        println!(
            "{k:<44} {a50:>8.1} / {a99:>7.1}   {b50:>10.1} / {b99:>7.1}   {:>6.1}x / {:>5.1}x",
            b50 / a50.max(1e-9),
            b99 / a99.max(1e-9)
        );
    }
    if mismatches > 0 {
        println!("note: {mismatches} answers differed between the layouts (event-per-cell rebuilds sessions at query time without the closed set and lateness rules)");
    }
    if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
        println!("kept tables {ts} and {te} (BENCH_KEEP=1)");
        return Ok(());
    }
    let mut c = connect()?;
    for t in [&ts, &te] {
        c.drop_table(t).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// An (experiment, variation) some session of project `p` saw.
fn experiment_of(c: &mut HbaseClient, table: &str, p: u64) -> Res<Option<(u64, u64)>> {
    let mut found = None;
    for salt in 0..schema::SALTS {
        let scan = TScan {
            start_row: Some(schema::project_start(salt, p, 0)),
            stop_row: Some(schema::project_stop(salt, p)),
            timestamp: None,
            columns: Some(vec![b"q:experiments".to_vec()]),
            caching: Some(1000),
            filter_string: None,
            batch_size: None,
            sort_columns: None,
            reversed: None,
            cache_blocks: None,
        };
        c.scan(table, scan, 1000, |r| {
            let v = r
                .columns
                .and_then(|m| m.into_values().next())
                .and_then(|c| c.value)
                .unwrap_or_default();
            if let Some(first) = schema::parse_experiments(&v).and_then(|x| x.first().copied()) {
                found = Some(first);
                return false;
            }
            true
        })
        .map_err(|e| e.to_string())?;
        if found.is_some() {
            break;
        }
    }
    Ok(found)
}
