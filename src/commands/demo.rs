//! `sessionflow demo`: the whole pipeline in one process, no servers.
//!
//! Generates a synthetic click stream in memory, runs it on N workers, writes the SessionDB
//! (one row per session, its latest snapshot) and every snapshot into a local directory, shows
//! live progress, and ends with a table by experiment variation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use sessionflow_operators::session::Snapshot;
use sessionflow_operators::sink::files::{finish_all, LineFile};
use sessionflow_operators::source::memory::MemoryReader;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::config::SessionArgs;
use crate::generate::{GenerateArgs, Generator};
use crate::pipeline::{self, Attach, Outputs};
use crate::stats::Stats;

/// Flags of `sessionflow demo`.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Events to generate (lines).
    #[arg(long, default_value_t = 300_000)]
    pub events: u64,
    /// Input partitions (count).
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Worker threads (count).
    #[arg(long, short = 'w', default_value_t = 2)]
    pub workers: usize,
    /// Random seed of the generated stream.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Directory that receives `sessiondb.jsonl`, `snapshots.jsonl`, `dead_letters.jsonl`
    /// and `stats.json` (path).
    #[arg(long, default_value = "sessionflow-demo")]
    pub out_dir: PathBuf,
    /// Session semantics.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// What one worker last reported, for the live progress line.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    events_read: u64,
    open_sessions: u64,
    snapshots: u64,
    /// The worker's source window (`None` once its input ended).
    window: Option<u64>,
}

/// One session's final snapshot, for the table.
struct Final {
    project_id: u64,
    visitor_id: String,
    events: u64,
    revenue: i128,
    experiments: Vec<(u64, u64)>,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<(), String> {
    let job = args.session.job()?;
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    std::fs::create_dir_all(&args.out_dir).map_err(|e| format!("cannot create {}: {e}", args.out_dir.display()))?;

    eprintln!(
        "generating {} events in {} partitions (seed {}) ...",
        args.events, args.partitions, args.seed
    );
    let gen_args = GenerateArgs {
        events: args.events,
        partitions: args.partitions,
        seed: args.seed,
        out_dir: args.out_dir.clone(),
        ..GenerateArgs::default()
    };
    gen_args.validate()?;
    let mut lines: Vec<Vec<Vec<u8>>> = vec![Vec::new(); args.partitions as usize];
    for (p, line) in Generator::new(&gen_args) {
        lines[p as usize].push(line);
    }
    let lines = Arc::new(lines);

    let figures = Arc::new(Mutex::new(vec![Figures::default(); args.workers]));
    let finals: Arc<Mutex<Vec<Final>>> = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let printer = {
        let (figures, done, total) = (Arc::clone(&figures), Arc::clone(&done), args.events);
        let window_ms = args.session.window;
        std::thread::spawn(move || progress_loop(&figures, &done, total, window_ms, started))
    };

    let out_dir = args.out_dir.clone();
    let config = timely::Config {
        communication: if args.workers > 1 {
            timely::CommunicationConfig::Process(args.workers)
        } else {
            timely::CommunicationConfig::Thread
        },
        worker: timely::WorkerConfig::default(),
    };
    let (figs, fins) = (Arc::clone(&figures), Arc::clone(&finals));
    let guards = timely::execute(config, move |worker| -> Result<Option<Stats>, String> {
        let index = worker.index();
        let reader = MemoryReader::new(Arc::clone(&lines), index, worker.peers());
        // The generator partitions like Kafka's default partitioner (see `Routing`).
        let job = job.routed(lines.len(), worker.peers());
        let files = if index == 0 {
            let s = LineFile::create(&out_dir.join("snapshots.jsonl"))?;
            let d = LineFile::create(&out_dir.join("dead_letters.jsonl"))?;
            Some((
                std::rc::Rc::new(std::cell::RefCell::new(s)),
                std::rc::Rc::new(std::cell::RefCell::new(d)),
            ))
        } else {
            None
        };
        let collect_finals = CollectFinals(Arc::clone(&fins));
        let outputs = Outputs {
            snapshot_file: files.as_ref().map(|f| std::rc::Rc::clone(&f.0)),
            dead_letter_file: files.as_ref().map(|f| std::rc::Rc::clone(&f.1)),
            snapshot_sinks: vec![Box::new(collect_finals)],
            ..Outputs::default()
        };
        let built = pipeline::build(worker, &job, reader, outputs);
        let figs = Arc::clone(&figs);
        let refresh = super::run::figures_refresh(PROGRESS_EVERY.as_millis() as u64);
        pipeline::run_to_completion(worker, &built, refresh, |b| {
            let src = b.source.borrow();
            let ses = b.session.borrow();
            if let Ok(mut f) = figs.lock() {
                f[index] = Figures {
                    events_read: src.events_read,
                    open_sessions: ses.open_sessions,
                    snapshots: ses.counters.snapshots,
                    window: src.window,
                };
            }
        });
        let gathered = pipeline::gather_stats(worker, built.stats(), built.source.borrow().error.clone());
        let Some((stats, errors)) = gathered else {
            return Ok(None);
        };
        if let Some(e) = errors.into_iter().next() {
            if let Some((s, d)) = files {
                s.borrow_mut().abandon();
                d.borrow_mut().abandon();
            }
            return Err(e);
        }
        if let Some((s, d)) = files {
            finish_all([&*s, &*d])?;
        }
        Ok(Some(stats))
    })?;
    let mut stats = None;
    for r in guards.join() {
        match r {
            Ok(Ok(Some(s))) => stats = Some(s),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("worker failed: {e}")),
        }
    }
    done.store(true, Ordering::SeqCst);
    let _ = printer.join();
    let stats = stats.ok_or("no worker reported counters")?;
    let elapsed = started.elapsed();
    crate::commands::replay::write_json_file(&args.out_dir.join("stats.json"), &stats)?;
    write_sessiondb(&args.out_dir)?;

    let finals = finals.lock().map_err(|_| "a worker panicked")?;
    eprintln!();
    eprintln!(
        "done in {:.2} s: {} events read ({:.0} events/s), {} accepted, {} duplicates, {} late, {} invalid",
        elapsed.as_secs_f64(),
        stats.events_read,
        stats.events_read as f64 / elapsed.as_secs_f64().max(1e-9),
        stats.accepted,
        stats.duplicates,
        stats.late,
        stats.invalid
    );
    eprintln!(
        "{} sessions, {} snapshots; SessionDB in {}",
        stats.sessions_opened,
        stats.snapshots,
        args.out_dir.display()
    );
    println!();
    print!("{}", variation_table(&finals));
    Ok(())
}

/// Keeps each session's final snapshot for the closing table.
struct CollectFinals(Arc<Mutex<Vec<Final>>>);

impl Attach<Snapshot> for CollectFinals {
    fn attach<'s>(self: Box<Self>, stream: StreamVec<'s, u64, Snapshot>) -> StreamVec<'s, u64, ()> {
        let finals = self.0;
        stream.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "CollectFinals", move |_, _| {
            move |input, _output| {
                input.for_each(|_, data| {
                    let Ok(mut v) = finals.lock() else { return };
                    for snap in data.drain(..) {
                        // A session's last snapshot is its SessionDB row; merged-away sessions'
                        // events live on in their survivor, so they are not counted again.
                        if snap.closed && snap.merged_into.is_none() {
                            v.push(Final {
                                project_id: snap.project_id,
                                visitor_id: snap.visitor_id.to_string(),
                                events: snap.event_count,
                                revenue: snap.revenue,
                                experiments: snap.experiments,
                            });
                        }
                    }
                })
            }
        })
    }
}

/// Interval of the demo's progress line.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

fn progress_loop(figures: &Mutex<Vec<Figures>>, done: &AtomicBool, total: u64, window_ms: u64, started: Instant) {
    let mut last = (Instant::now(), 0u64, 0u64, 0u64);
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(PROGRESS_EVERY);
        let Ok(f) = figures.lock() else { return };
        let read: u64 = f.iter().map(|x| x.events_read).sum();
        let open: u64 = f.iter().map(|x| x.open_sessions).sum();
        let snaps: u64 = f.iter().map(|x| x.snapshots).sum();
        // The slowest worker's window; `None` once every input ended.
        let window = f.iter().filter_map(|x| x.window).min();
        drop(f);
        let dt = last.0.elapsed().as_secs_f64().max(1e-9);
        let rate = (read - last.1) as f64 / dt;
        let per_window = match window {
            Some(w) if w > last.3 && last.3 > 0 => (snaps - last.2) / (w - last.3),
            _ => 0,
        };
        eprint!(
            "\r[{:5.1}s] {:>9}/{} events  {:>9.0} ev/s  open sessions {:>7}  snapshots {:>8} (~{:>5}/window)  window {:<32}",
            started.elapsed().as_secs_f64(),
            read,
            total,
            rate,
            open,
            snaps,
            per_window,
            window.map_or_else(
                || "- (input read)".to_string(),
                |w| format!("{w} ({})", super::run::window_start(w, window_ms))
            )
        );
        let _ = std::io::stderr().flush();
        if let Some(w) = window.filter(|w| *w > last.3) {
            last = (Instant::now(), read, snaps, w);
        } else {
            last = (Instant::now(), read, last.2, last.3);
        }
    }
}

/// Writes `sessiondb.jsonl`: one row per session, as SessionDB holds it at the end of a
/// bounded run: every session's last snapshot, which is its `"closed": true` one.
fn write_sessiondb(dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join("snapshots.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = LineFile::create(&dir.join("sessiondb.jsonl"))?;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("bad snapshot line: {e}"))?;
        if v["closed"] == serde_json::Value::Bool(true) {
            out.write_line(line.as_bytes());
        }
    }
    out.finish()
}

/// The final table: per experiment variation, sessions, visitors, events and revenue.
fn variation_table(finals: &[Final]) -> String {
    #[derive(Default)]
    struct Row {
        sessions: u64,
        visitors: HashSet<(u64, String)>,
        events: u64,
        revenue: i128,
    }
    let mut rows: BTreeMap<Option<(u64, u64)>, Row> = BTreeMap::new();
    let mut add = |key: Option<(u64, u64)>, f: &Final| {
        let r = rows.entry(key).or_default();
        r.sessions += 1;
        r.visitors.insert((f.project_id, f.visitor_id.clone()));
        r.events += f.events;
        r.revenue += f.revenue;
    };
    for f in finals {
        add(None, f);
        for x in &f.experiments {
            add(Some(*x), f);
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{:<24} {:>10} {:>10} {:>12} {:>14} {:>14}\n",
        "experiment/variation", "sessions", "visitors", "events", "events/session", "revenue/session"
    ));
    let by_size: HashMap<Option<(u64, u64)>, u64> = rows.iter().map(|(k, r)| (*k, r.sessions)).collect();
    let mut keys: Vec<_> = rows.keys().copied().collect();
    // All sessions first, then the variations with the most sessions (at most 20 rows).
    keys.sort_by_key(|k| (k.is_some(), std::cmp::Reverse(by_size[k]), *k));
    let more = keys.len() > 21;
    for k in keys.into_iter().take(21) {
        let r = &rows[&k];
        let label = match k {
            None => "(all sessions)".to_string(),
            Some((e, v)) => format!("exp {e} / var {v}"),
        };
        out.push_str(&format!(
            "{:<24} {:>10} {:>10} {:>12} {:>14.2} {:>14.2}\n",
            label,
            r.sessions,
            r.visitors.len(),
            r.events,
            r.events as f64 / r.sessions.max(1) as f64,
            r.revenue as f64 / r.sessions.max(1) as f64 / 100.0
        ));
    }
    if more {
        out.push_str("...\n");
    }
    out
}
