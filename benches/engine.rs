//! Engine benchmarks (a bench binary; `cargo bench --bench engine`).
//!
//! 1. `sessionize` operator on pre-parsed events, one worker: events/s.
//! 2. Window emission: time to process a window that changes 10K sessions, with 100K and with
//!    2M sessions open (flat is the goal: work is proportional to change).
//! 3. Resident bytes per open session of 10 events.
//! 4. Replay of a generated 1M-event file with 1 and 2 workers: events/s.
//!
//! Figures vary with the machine; ratios measured side by side in one run are what counts.
//! Set `BENCH_QUICK=1` for a short smoke run.

use std::time::{Duration, Instant};

use sessionflow::commands::replay::{self, ReplayArgs};
use sessionflow::generate::{self, GenerateArgs};
use sessionflow_operators::event::{AttrValue, CompactString, Event, Experiment};
use sessionflow_operators::record::Sourced;
use sessionflow_operators::session::{SessionConfig, SessionStore, Sessionize};
use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::Probe;

const T0: i64 = 1_700_000_000_000;

/// `BENCH_ONLY=operator|emission|memory|replay` runs one benchmark.
fn wanted(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |v| v == name)
}

fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// A realistic event of session `s` (visitor `s/3`), its `i`-th, at `ts`.
fn event(s: u64, i: u64, ts: i64) -> Sourced {
    let attrs: Vec<(CompactString, AttrValue)> = vec![
        ("browser".into(), AttrValue::Str("chrome".into())),
        ("country".into(), AttrValue::Str("US".into())),
        ("device".into(), AttrValue::Str("desktop".into())),
        (
            "ip".into(),
            AttrValue::Str(format!("10.{}.{}.{}", s % 256, (s / 256) % 256, s % 7).into()),
        ),
        ("language".into(), AttrValue::Str("en-US".into())),
        ("os".into(), AttrValue::Str("windows".into())),
    ];
    let kind = if i == 0 {
        "pageview"
    } else if i % 5 == 4 {
        "click"
    } else {
        "pageview"
    };
    Sourced {
        partition: (s % 4) as u32,
        offset: s * 16 + i,
        raw: String::new(),
        event: Event {
            event_id: format!("{:016x}", s.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i).into(),
            session_id: Some(format!("{:016x}", s.wrapping_mul(0xff51_afd7_ed55_8ccd)).into()),
            visitor_id: format!("{:016x}", (s / 3).wrapping_mul(0xc4ce_b9fe_1a85_ec53)).into(),
            project_id: 1000 + s % 50,
            timestamp: ts,
            kind: kind.into(),
            name: (i % 7 == 6).then(|| "add_to_cart".into()),
            revenue: (i % 7 == 6).then_some(1299),
            value: None,
            attributes: Some(attrs),
            tags: Some(vec![("path".into(), format!("/p/SKU-{:05}", (s + i) % 20_000).into())]),
            experiments: (i == 1).then(|| {
                vec![Experiment {
                    experiment_id: 11,
                    variation_id: s % 3,
                }]
            }),
        },
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// 1. The operator on pre-parsed events, single worker.
fn bench_operator(sessions: u64) -> f64 {
    let per = 10u64;
    // Sessions interleave like live traffic: event i of every session, then event i+1 ...
    let mut batches: Vec<(u64, Vec<Sourced>)> = Vec::new();
    let cfg = SessionConfig::default();
    for i in 0..per {
        let ts = T0 + (i as i64) * 20_000;
        let window = (ts / 60_000) as u64;
        let evs: Vec<Sourced> = (0..sessions).map(|s| event(s, i, ts + (s % 1000) as i64)).collect();
        batches.push((window, evs));
    }
    let n = sessions * per;
    let started = Instant::now();
    timely::execute_directly(move |worker| {
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Sourced>();
            let probe = stream.sessionize(cfg).snapshots.probe().0;
            (input, probe)
        });
        for (w, evs) in batches {
            input.advance_to(w);
            for e in evs {
                input.send(e);
            }
            while probe.less_than(input.time()) {
                worker.step();
            }
        }
        input.close();
        while !probe.done() {
            worker.step();
        }
    });
    n as f64 / started.elapsed().as_secs_f64()
}

/// 2. Time to process a window that changes `changed` of `open` open sessions.
///
/// The median of [`EMISSION_WINDOWS`] consecutive windows, each changing other sessions (one
/// ~30 ms window alone varied by half from run to run on the development machine).
fn bench_emission(open: u64, changed: u64) -> (Duration, usize) {
    let cfg = SessionConfig::default();
    let mut store = SessionStore::new(cfg);
    let w0 = (T0 / 60_000) as u64;
    // Open the background sessions (2 events each) in window w0.
    for s in 0..open {
        store.insert(w0, event(s, 0, T0 + (s % 50_000) as i64));
        store.insert(w0, event(s, 1, T0 + 1 + (s % 50_000) as i64));
    }
    let mut sink = 0usize;
    store.process(w0, &mut |_| sink += 1);
    // The measured windows: one new event for `changed` sessions spread over the key space,
    // other sessions in each window.
    let stride = (open / changed).max(1);
    let mut times = Vec::new();
    let mut emitted = 0usize;
    for round in 1..=EMISSION_WINDOWS {
        let w = w0 + round;
        for k in 0..changed {
            let s = (k * stride + round) % open;
            store.insert(w, event(s, 1 + round, T0 + 60_000 * round as i64 + k as i64));
        }
        emitted = 0;
        let started = Instant::now();
        store.process(w, &mut |_| emitted += 1);
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], emitted)
}

/// Windows [`bench_emission`] measures.
const EMISSION_WINDOWS: u64 = 5;

/// 3. Resident bytes per open session of 10 events.
///
/// Windows are small (a tenth of the sessions each) so buffered input stays small next to the
/// session state being measured, and the gap is long so every session stays open.
fn bench_memory(sessions: u64) -> f64 {
    let cfg = SessionConfig {
        gap_ms: 24 * 3_600_000,
        ..SessionConfig::default()
    };
    let mut store = SessionStore::new(cfg);
    let w0 = (T0 / 60_000) as u64;
    let before = resident_bytes();
    let mut sink = 0usize;
    for i in 0..10u64 {
        for c in 0..10u64 {
            let w = w0 + i * 10 + c;
            let ts = w as i64 * 60_000;
            for s in (c..sessions).step_by(10) {
                store.insert(w, event(s, i, ts + (s % 1000) as i64));
            }
            store.process(w, &mut |_| sink += 1);
        }
    }
    assert_eq!(store.open_sessions() as u64, sessions);
    let after = resident_bytes();
    let (state, index) = store.heap_bytes();
    println!(
        "   (approximate heap: sessions {} B, close index {} B per session; Session struct {} B)",
        state as u64 / sessions,
        index as u64 / sessions,
        std::mem::size_of::<sessionflow_operators::session::Session>()
    );
    std::hint::black_box(&store);
    (after.saturating_sub(before)) as f64 / sessions as f64
}

/// 4. Replay of a generated file set with `workers` workers: events/s.
fn bench_replay(dir: &std::path::Path, inputs: &[std::path::PathBuf], lines: u64, workers: usize) -> f64 {
    let args = ReplayArgs {
        inputs: inputs.to_vec(),
        output: dir.join(format!("out-{workers}.jsonl")),
        dead_letter: dir.join(format!("dead-{workers}.jsonl")),
        experiments: None,
        stats: dir.join(format!("stats-{workers}.json")),
        session: sessionflow::config::SessionArgs {
            window: 60_000,
            gap: 1_800_000,
            lateness: 5_000,
            max_events: 1000,
        },
        cluster: sessionflow::cluster::ClusterArgs {
            workers,
            processes: 1,
            process_id: 0,
            hostfile: None,
        },
    };
    // Start from a settled machine: the generator's files and the previous run's output
    // written back, so this run does not pay for their writeback.
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let started = Instant::now();
    let stats = replay::run(args).ok().flatten();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(stats.map(|s| s.events_read), Some(lines), "replay failed");
    lines as f64 / secs
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Either way
    // run once.
    let q = quick();
    println!("sessionflow engine benchmarks{}", if q { " (quick)" } else { "" });
    println!();

    // Memory first: freed memory of the other benchmarks would hide the growth.
    if wanted("memory") {
        let mem_sessions = if q { 20_000 } else { 200_000 };
        let per = bench_memory(mem_sessions);
        println!("3. resident bytes per open session of 10 events ({mem_sessions} sessions): {per:.0} B");
    }

    if wanted("operator") {
        let sessions = if q { 20_000 } else { 200_000 };
        let rate = bench_operator(sessions);
        println!(
            "1. sessionize operator, 1 worker, pre-parsed events ({} events): {:.2} M events/s",
            sessions * 10,
            rate / 1e6
        );
    }

    if wanted("emission") {
        let changed = 10_000;
        let (small, large) = if q { (20_000, 100_000) } else { (100_000, 2_000_000) };
        let (t_small, n_small) = bench_emission(small, changed);
        let (t_large, n_large) = bench_emission(large, changed);
        println!(
            "2. emit a window changing {changed} sessions (median of {EMISSION_WINDOWS}): {:.2} ms with {small} open ({n_small} snapshots), {:.2} ms with {large} open ({n_large} snapshots): ratio {:.2}",
            t_small.as_secs_f64() * 1e3,
            t_large.as_secs_f64() * 1e3,
            t_large.as_secs_f64() / t_small.as_secs_f64()
        );
    }

    if wanted("replay") {
        let lines = if q { 100_000 } else { 1_000_000 };
        let dir = std::env::temp_dir().join(format!("sessionflow-bench-{}", std::process::id()));
        let gen = GenerateArgs {
            events: lines,
            partitions: 4,
            out_dir: dir.clone(),
            ..GenerateArgs::default()
        };
        let summary = generate::write_files(&gen).expect("generate");
        let r1 = bench_replay(&dir, &summary.files, lines, 1);
        for name in ["out-1.jsonl", "dead-1.jsonl", "stats-1.json"] {
            let _ = std::fs::remove_file(dir.join(name));
        }
        let r2 = bench_replay(&dir, &summary.files, lines, 2);
        println!(
            "4. replay of {lines} generated events ({:.0} MB): 1 worker {:.2} M events/s, 2 workers {:.2} M events/s (x{:.2})",
            summary.bytes as f64 / 1e6,
            r1 / 1e6,
            r2 / 1e6,
            r2 / r1
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
