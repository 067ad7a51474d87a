//! Kafka benchmark (a bench binary; `cargo bench --bench kafka`), on the broker at
//! `KAFKA_BROKERS` (default 127.0.0.1:9092); skipped with a message when none is reachable.
//!
//! 1. Produces N generated events (default 1M, `BENCH_QUICK=1`: 100k) to a new 4-partition
//!    topic (`sessionflow generate --brokers`).
//! 2. Raw consumption, the limit: one rdkafka `BaseConsumer` reads the whole topic, counting
//!    bytes, nothing else; the fastest of three such reads is the round's limit. Then the
//!    same read with every message copied and parsed as the job's source does it
//!    (`parse_record`: the spec's validation, the event built), by one consumer, then by two in
//!    two threads (two partitions each, like the job's 2 workers): the most any job that
//!    validates its input could reach here, with no sessions and no output.
//! 3. The job end to end: `sessionflow run --stop-at-end` with 2 workers, output dropped (null
//!    sink), then with the replay files written, then with snapshots and dead letters produced
//!    to Kafka topics (the production shape without HBase; the broker shares the cores).
//!    Then what writing that output costs with no engine (the bound it puts on any job here):
//!    job/files' snapshot file written to a file and synced, and its lines produced to a new
//!    topic with the Kafka sink's settings, each timed as if it had read the round's events.
//!    And the floor of a job writing files here: parse/2's two parsing consumers and the job's
//!    file writer writing that snapshot file, all at once on the same cores, no sessions.
//! 4. For scale, the engine alone: `sessionflow replay` of the same events from files (the
//!    generator's files for the same seed), 2 workers, same outputs as 3.
//!
//! Each job and replay runs as its own process (the `sessionflow` binary, timed from start to
//! exit), as a deployed job does: run in the bench's process, a run reused the memory the
//! one before it had freed, and the first (job/null) alone paid for fresh pages (3.75 s
//! against 3.15 s for the job writing files after it).
//!
//! Prints events/s of each and the job/raw ratio, measured side by side in one run, and the
//! CPU time each took per event: user and system, of the bench's process and of the
//! `sessionflow` process it ran, not the broker's. A machine's speed drifts; what a run asks
//! of it drifts less. (The reads' CPU time includes creating their consumers, which their
//! timed reads leave out.) Before each
//! timed run the previous run's output files are removed and dirty pages written back (`sync`).
//! `BENCH_RUNS=N` repeats steps 2-4 N times in turn (the machine's speed drifts within
//! minutes) and then prints each row's median, its ratio taken against its own round's raw
//! read.

use std::io::Write;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use sessionflow::commands::generate_kafka::{line_key, produce, Deliveries, KafkaGenerateArgs};
use sessionflow::generate::{write_files, GenerateArgs};
use sessionflow_operators::sink::files::LineFile;
use sessionflow_operators::sink::kafka::{ensure_topic, PRODUCER_OPTIONS};
use sessionflow_operators::source::kafka::{block_on, client_config, wait_for_topic, ClientKind, PREFETCH_OPTIONS};
use sessionflow_operators::source::{parse_record, RawRecord};

const PARTITIONS: u32 = 4;
/// Raw reads per round; the fastest is the round's limit.
const RAW_READS: usize = 3;

/// `--output`, `--dead-letter` and `--stats` into `dir` (the same files for every run).
fn file_flags(dir: &std::path::Path) -> Vec<String> {
    [
        ("--output", "out.jsonl"),
        ("--dead-letter", "dead.jsonl"),
        ("--stats", "stats.json"),
    ]
    .into_iter()
    .flat_map(|(flag, name)| [flag.to_string(), dir.join(name).display().to_string()])
    .collect()
}

/// Lets the machine settle before a timed run: the previous run's output files are removed and
/// every dirty page is written back (`sync`), so a run does not pay for the last one's
/// writeback (on the development VM that cost ~1 s of system time per 724 MB written).
fn settle(dir: &std::path::Path) {
    for name in ["out.jsonl", "dead.jsonl", "stats.json"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(1));
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("kafka bench failed: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let events: u64 = if quick { 100_000 } else { 1_000_000 };
    // Reachable? A missing topic answers quickly; a missing broker does not.
    let probe = wait_for_topic(
        &brokers,
        "__consumer_offsets",
        &[],
        Instant::now() + Duration::from_secs(5),
    );
    if let Err(e) = probe {
        if !e.contains("does not exist") {
            println!("kafka bench skipped: no Kafka broker at {brokers} ({e})");
            return Ok(());
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let topic = format!("sf-bench-{}-{stamp}", std::process::id());

    // 1. Produce.
    let gen = GenerateArgs {
        events,
        partitions: PARTITIONS,
        seed: 42,
        ..GenerateArgs::default()
    };
    let kafka = KafkaGenerateArgs {
        brokers: Some(brokers.clone()),
        topic: Some(topic.clone()),
        realtime: false,
        options: vec![],
        kafka_config: None,
        connect_timeout: 60_000,
    };
    let produced = produce(&gen, &kafka, &brokers, &topic)?;
    println!(
        "produce  {:>9} messages {:>7.1} MB  {:>7.2} s  {:>9.0} messages/s",
        produced.messages,
        produced.bytes as f64 / 1e6,
        produced.seconds,
        produced.messages as f64 / produced.seconds
    );

    let dir = std::env::temp_dir().join(format!("sf-bench-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // The replay's input: the generator's files for the same seed.
    let files = write_files(&GenerateArgs {
        out_dir: dir.join("in"),
        ..gen
    })
    .map_err(|e| e.to_string())?;
    let (snap_topic, dead_topic) = (format!("{topic}-snapshots"), format!("{topic}-dead"));
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut rows = Rows::default();
    for round in 1..=runs {
        if runs > 1 {
            println!("round {round} of {runs}");
        }
        let ctx = Round {
            brokers: &brokers,
            topic: &topic,
            dir: &dir,
            messages: produced.messages,
            round,
        };
        ctx.measure(&files.files, (&snap_topic, &dead_topic), &mut rows)?;
    }
    if runs > 1 {
        rows.print_medians(runs);
    }
    let _ = std::fs::remove_dir_all(&dir);
    delete_topics(&brokers, &[&topic, &snap_topic, &dead_topic]);
    Ok(())
}

/// The job/files run's snapshot file, kept for [`Round::output_bounds`].
const KEPT_OUTPUT: &str = "job-files-out.jsonl";

/// One round of measurements on the produced topic.
struct Round<'a> {
    brokers: &'a str,
    topic: &'a str,
    dir: &'a std::path::Path,
    messages: u64,
    round: usize,
}

/// One round's measurement: events/s, ratio to that round's raw read, CPU microseconds per
/// event.
type Measured = (f64, f64, f64);

/// Every round's measurements, per row, in print order.
#[derive(Default)]
struct Rows(Vec<(String, Vec<Measured>)>);

/// CPU seconds used so far, user and system, by this process and by its children it waited
/// for (`/proc/self/stat`; 0 where there is none). A measurement's CPU time is the difference
/// across it: the bench runs one thing at a time, in its own threads or as a child process.
fn cpu_now() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces, but ends with the last `)`):
    // state is the first, utime, stime, cutime and cstime the 12th to 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..15)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    // In USER_HZ clock ticks, which Linux fixes at 100 per second.
    ticks as f64 / 100.0
}

/// Runs `f`: its result, and the CPU seconds (see [`cpu_now`]) it took.
fn with_cpu<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let before = cpu_now();
    let out = f();
    (out, cpu_now() - before)
}

/// CPU microseconds per event of a measurement that used `cpu` seconds for `events` events.
fn us_per_event(cpu: f64, events: u64) -> f64 {
    cpu * 1e6 / events.max(1) as f64
}

impl Rows {
    fn add(&mut self, label: &str, rate: f64, ratio: f64, cpu_us: f64) {
        match self.0.iter_mut().find(|(l, _)| l == label) {
            Some((_, v)) => v.push((rate, ratio, cpu_us)),
            None => self.0.push((label.to_string(), vec![(rate, ratio, cpu_us)])),
        }
    }

    /// Adds and prints a measurement that took `secs` and `cpu` CPU seconds for `read` events,
    /// against the round's raw read of `raw` events/s; `how` says what ran.
    fn report(&mut self, label: &str, read: u64, (secs, cpu): (f64, f64), raw: f64, how: &str) {
        let rate = read as f64 / secs;
        let us = us_per_event(cpu, read);
        self.add(label, rate, rate / raw, us);
        println!(
            "{label:<9}{read:>9} events            {secs:>7.2} s  {rate:>9.0} events/s  = {:.0}% of raw  CPU {cpu:.2} s = {us:.2} us/event  ({how})",
            100.0 * rate / raw
        );
    }

    fn print_medians(&self, runs: usize) {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        };
        println!("median of {runs} rounds (each ratio against its own round's raw read):");
        for (label, v) in &self.0 {
            let rate = median(v.iter().map(|x| x.0).collect());
            let ratio = median(v.iter().map(|x| x.1).collect());
            let us = median(v.iter().map(|x| x.2).collect());
            println!(
                "{label:<9}{rate:>12.0} events/s  = {:.0}% of raw  CPU {us:.2} us/event",
                100.0 * ratio
            );
        }
    }
}

impl Round<'_> {
    /// Raw read, read and parse, the job three ways and the replay, one after the other.
    fn measure(
        &self,
        inputs: &[std::path::PathBuf],
        (snap_topic, dead_topic): (&str, &str),
        rows: &mut Rows,
    ) -> Result<(), String> {
        let (brokers, topic, dir) = (self.brokers, self.topic, self.dir);
        // 2. Raw consumption of the whole topic, the limit: the fastest of `RAW_READS` reads,
        // as one slow read (a stall of the shared machine) would make every ratio of its round
        // look better than it is.
        let all: Vec<i32> = (0..PARTITIONS as i32).collect();
        let mut reads = Vec::with_capacity(RAW_READS);
        for _ in 0..RAW_READS {
            settle(dir);
            let (read, cpu) = with_cpu(|| raw_consume(brokers, topic, &all, false, None));
            let read = read?;
            if read.count != self.messages {
                return Err(format!(
                    "raw consumer read {} of {} messages",
                    read.count, self.messages
                ));
            }
            reads.push((read, cpu));
        }
        let times: Vec<String> = reads.iter().map(|(r, _)| format!("{:.2}", r.secs)).collect();
        let (read, cpu) = reads
            .into_iter()
            .min_by(|a, b| a.0.secs.total_cmp(&b.0.secs))
            .ok_or("no raw read")?;
        let (count, secs) = (read.count, read.secs);
        let raw = count as f64 / secs;
        let us = us_per_event(cpu, count);
        rows.add("raw", raw, 1.0, us);
        println!(
            "raw      {count:>9} messages {:>7.1} MB  {secs:>7.2} s  {raw:>9.0} events/s  CPU {cpu:.2} s = {us:.2} us/event  (1 BaseConsumer, counting bytes; fastest of {} s)",
            read.bytes as f64 / 1e6,
            times.join(" / ")
        );

        // 2b. The same read, every message parsed as the source parses it: one consumer, then
        // two in two threads.
        for threads in [1usize, 2] {
            settle(dir);
            let (read, cpu) = with_cpu(|| self.parsing_read(threads, None));
            let (n, ok, secs) = read?;
            let rate = n as f64 / secs;
            let us = us_per_event(cpu, n);
            rows.add(&format!("parse/{threads}"), rate, rate / raw, us);
            println!(
                "parse/{threads}  {n:>9} messages ({ok} valid) {secs:>7.2} s  {rate:>9.0} events/s  = {:.0}% of raw  CPU {cpu:.2} s = {us:.2} us/event  ({threads} BaseConsumer(s), each message copied and parsed as the source does, no sessions)",
                100.0 * rate / raw
            );
        }

        // 3. The job end to end, 2 workers: output dropped, then the replay files written,
        // then snapshots and dead letters to Kafka topics. A group of its own each round, so
        // each reads the topic from its start.
        for (label, files) in [("job/null", false), ("job/files", true), ("job/kafka", false)] {
            let group = format!("{topic}-{}-{}", label.replace('/', "-"), self.round);
            let mut argv: Vec<String> = ["run", "--brokers", brokers, "--topic", topic, "--group", &group]
                .iter()
                .map(|s| s.to_string())
                .collect();
            argv.extend(["--stop-at-end", "--workers", "2", "--progress", "0"].map(String::from));
            if files {
                argv.extend(file_flags(dir));
            }
            if label == "job/kafka" {
                argv.extend([
                    "--snapshot-topic".to_string(),
                    snap_topic.to_string(),
                    "--dead-letter-topic".to_string(),
                    dead_topic.to_string(),
                ]);
            }
            settle(dir);
            let (read, time) = timed_run(&argv, "run")?;
            if read != self.messages {
                return Err(format!("{label}: read {read} of {} messages", self.messages));
            }
            rows.report(label, read, time, raw, "run --stop-at-end, 2 workers");
            if files {
                // Kept (under a name `settle` leaves alone) for the output bounds below.
                std::fs::rename(dir.join("out.jsonl"), dir.join(KEPT_OUTPUT)).map_err(|e| e.to_string())?;
            }
        }
        self.output_bounds(rows, raw)?;

        // 4. The engine alone on the same events, from files.
        let mut argv: Vec<String> = vec!["replay".into()];
        for f in inputs {
            argv.push("--input".into());
            argv.push(f.display().to_string());
        }
        argv.extend(file_flags(dir));
        argv.extend(["--workers", "2"].map(String::from));
        settle(dir);
        let (read, time) = timed_run(&argv, "replay")?;
        rows.report("replay", read, time, raw, "replay from files, 2 workers");
        Ok(())
    }

    /// Reads the whole topic with `threads` consumers in as many threads (partition mod
    /// `threads` = thread, as the job's workers split them), each message copied and parsed
    /// as the source does: (messages, valid events, the slowest thread's seconds). With
    /// `start`, each thread waits there before its timed read (and always reaches it, even
    /// when its setup failed, so that no other waits forever).
    fn parsing_read(&self, threads: usize, start: Option<&Barrier>) -> Result<(u64, u64, f64), String> {
        let parts: Vec<Vec<i32>> = (0..threads as i32)
            .map(|t| (0..PARTITIONS as i32).filter(|p| p % threads as i32 == t).collect())
            .collect();
        let reads: Vec<Result<Read, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .map(|ps| s.spawn(|| raw_consume(self.brokers, self.topic, ps, true, start)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("a reading thread panicked".into())))
                .collect()
        });
        // Timed like the raw read, from the assignment on: the slowest thread's time.
        let (mut n, mut ok, mut secs) = (0u64, 0u64, 0f64);
        for r in reads {
            let r = r?;
            n += r.count;
            ok += r.parsed;
            secs = secs.max(r.secs);
        }
        if n != self.messages {
            return Err(format!("parsing consumers read {n} of {} messages", self.messages));
        }
        Ok((n, ok, secs))
    }

    /// 3c. The floor of any job that validates this input and writes this output to a file
    /// here, with no sessions at all: parse/2's two parsing consumers and the job's own file
    /// writer ([`LineFile`], 1 MiB buffer, early writeback, synced at the end) writing job/files'
    /// snapshot lines, all at once on the same cores, from one start: the seconds until the
    /// last of them is done. Writing from the start, not as windows close, is the most overlap
    /// a job could get.
    fn floor(&self, lines: &[&[u8]]) -> Result<f64, String> {
        const READERS: usize = 2;
        let start = Barrier::new(READERS + 1);
        let path = self.dir.join("out.jsonl");
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let file = LineFile::create(&path);
                start.wait();
                let started = Instant::now();
                let mut file = file?;
                for line in lines {
                    file.write_line(line);
                }
                file.finish()?;
                Ok::<f64, String>(started.elapsed().as_secs_f64())
            });
            let read = self.parsing_read(READERS, Some(&start));
            let wrote = writer
                .join()
                .unwrap_or_else(|_| Err("the writing thread panicked".into()));
            Ok(read?.2.max(wrote?))
        })
    }

    /// 3b. What writing the job's output costs with no engine at all, from the snapshot file
    /// job/files wrote: its bytes written to a file and synced, then its lines produced to a
    /// new topic keyed by session id by two producers (as the job's two workers have) with the
    /// Kafka sink's settings, until every message is acknowledged. Each is reported as input
    /// events/s (this round's events over the time taken): no job writing that output here
    /// can be faster.
    fn output_bounds(&self, rows: &mut Rows, raw: f64) -> Result<(), String> {
        let kept = self.dir.join(KEPT_OUTPUT);
        let text = std::fs::read(&kept).map_err(|e| format!("cannot read {}: {e}", kept.display()))?;
        let _ = std::fs::remove_file(&kept);
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let mb = text.len() as f64 / 1e6;

        settle(self.dir);
        let path = self.dir.join("out.jsonl");
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let (written, cpu) = with_cpu(|| {
            let started = Instant::now();
            // In 1 MiB writes, as the job's file sink writes (one 724 MB `write` took 0.8-2.2 s
            // here, 1 MiB ones 0.2 s).
            let mut file = std::fs::File::create(&path).map_err(fail)?;
            text.chunks(1 << 20).try_for_each(|c| file.write_all(c)).map_err(fail)?;
            let wrote = started.elapsed().as_secs_f64();
            file.sync_all().map_err(fail)?;
            Ok::<_, String>((wrote, started.elapsed().as_secs_f64()))
        });
        let (wrote, secs) = written?;
        let how = format!(
            "the job's {} snapshots, {mb:.1} MB, written to a file ({wrote:.2} s) and synced, no engine",
            lines.len()
        );
        rows.report("out/file", self.messages, (secs, cpu), raw, &how);

        settle(self.dir);
        let (secs, cpu) = with_cpu(|| self.floor(&lines));
        let secs = secs?;
        let how =
            "parse/2's two parsing consumers and the job's file writer writing those snapshots, at once, no sessions";
        rows.report("floor", self.messages, (secs, cpu), raw, how);

        // Keyed as the sink keys them: by session id.
        let keyed = lines
            .iter()
            .map(|l| {
                let bad = || format!("not a snapshot: {}", String::from_utf8_lossy(&l[..l.len().min(80)]));
                line_key(l).map(|k| (k, *l)).ok_or_else(bad)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let topic = format!("{}-bound-{}", self.topic, self.round);
        let deadline = Instant::now() + Duration::from_secs(60);
        ensure_topic(self.brokers, &topic, PARTITIONS, &[], deadline)?;
        settle(self.dir);
        let (secs, cpu) = with_cpu(|| produce_all(self.brokers, &topic, &keyed));
        delete_topics(self.brokers, &[&topic]);
        let how = format!(
            "the same, produced by {PRODUCERS} producers with the sink's settings until acknowledged, no engine"
        );
        rows.report("out/kafka", self.messages, (secs?, cpu), raw, &how);
        Ok(())
    }
}

/// Producers in the output bound: one per worker of the job's runs, as the job has (each of
/// librdkafka's producers compresses on a thread of its own).
const PRODUCERS: usize = 2;

/// Produces every `(key, value)` to `topic` with the Kafka sink's settings, split among
/// [`PRODUCERS`] producers in as many threads, and waits until each is acknowledged: the
/// seconds that took, from the first send once all are connected.
fn produce_all(brokers: &str, topic: &str, messages: &[(Vec<u8>, &[u8])]) -> Result<f64, String> {
    let ready = Barrier::new(PRODUCERS + 1);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..PRODUCERS)
            .map(|i| {
                let (ready, share) = (&ready, messages.iter().skip(i).step_by(PRODUCERS));
                s.spawn(move || produce_share(brokers, topic, share, ready))
            })
            .collect();
        ready.wait();
        let started = Instant::now();
        let mut result = Ok(());
        for t in threads {
            let r = t.join().unwrap_or_else(|_| Err("a producing thread panicked".into()));
            result = result.and(r);
        }
        result.map(|()| started.elapsed().as_secs_f64())
    })
}

/// One thread of [`produce_all`]: connects, waits at `ready` for the others, then produces
/// `share` and waits for every acknowledgement. It always reaches `ready`, even when it fails
/// before, so that the others are not left waiting.
fn produce_share<'a>(
    brokers: &str,
    topic: &str,
    mut share: impl Iterator<Item = &'a (Vec<u8>, &'a [u8])>,
    ready: &Barrier,
) -> Result<(), String> {
    let connected = connect_producer(brokers, topic, share.next());
    ready.wait();
    let producer = connected?;
    let warm = producer.context().acked();
    let mut sent = 0u64;
    for (key, value) in share {
        let mut record = BaseRecord::to(topic).key(key).payload(*value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(format!("cannot produce to {topic}: {e}")),
            }
        }
        sent += 1;
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(300))
        .map_err(|e| format!("cannot flush to {topic}: {e}"))?;
    let acked = producer.context().acked() - warm;
    if let Some(e) = producer.context().error() {
        return Err(format!("cannot produce to {topic}: {e}"));
    }
    if acked != sent {
        return Err(format!("{acked} of {sent} messages acknowledged"));
    }
    Ok(())
}

/// A producer with the Kafka sink's settings, connected: `first` (the first message of its
/// share, left out of the timing) produced and acknowledged, which also takes the idempotent
/// producer's id; the output bound is timed from there on, like the raw read.
fn connect_producer(
    brokers: &str,
    topic: &str,
    first: Option<&(Vec<u8>, &[u8])>,
) -> Result<BaseProducer<Deliveries>, String> {
    let ours: Vec<(&str, String)> = PRODUCER_OPTIONS.map(|(k, v)| (k, v.to_string())).into();
    let producer: BaseProducer<Deliveries> = client_config(brokers, &ours, &[], ClientKind::Producer)?
        .create_with_context(Deliveries::new(format!("bench -> {topic}")))
        .map_err(|e| e.to_string())?;
    if let Some((key, value)) = first {
        producer
            .send(BaseRecord::to(topic).key(key).payload(*value))
            .map_err(|(e, _)| format!("cannot produce to {topic}: {e}"))?;
        producer
            .flush(Duration::from_secs(60))
            .map_err(|e| format!("cannot flush to {topic}: {e}"))?;
    }
    Ok(producer)
}

/// Runs `sessionflow ARGV` as its own process: (events read, (seconds from start to exit, its
/// CPU seconds)). The count is the one the command reports on stderr (`CMD: N events read,
/// ...`).
fn timed_run(argv: &[String], cmd: &str) -> Result<(u64, (f64, f64)), String> {
    let started = Instant::now();
    let (out, cpu) = with_cpu(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sessionflow"))
            .args(argv)
            .output()
    });
    let secs = started.elapsed().as_secs_f64();
    let out = out.map_err(|e| format!("cannot start sessionflow: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("sessionflow {cmd} failed ({}): {stderr}", out.status));
    }
    let prefix = format!("{cmd}: ");
    let read = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.split(" events read").next()?.parse().ok())
        .next_back()
        .ok_or_else(|| format!("sessionflow {cmd} reported no count: {stderr}"))?;
    Ok((read, (secs, cpu)))
}

/// Deletes the bench's topics (~1 GB on the broker's disk per 1M-event run); a failure is only
/// reported.
fn delete_topics(brokers: &str, topics: &[&str]) {
    let admin: Result<AdminClient<DefaultClientContext>, _> =
        ClientConfig::new().set("bootstrap.servers", brokers).create();
    let result = admin.map_err(|e| e.to_string()).and_then(|admin| {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        block_on(admin.delete_topics(topics, &opts)).map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        eprintln!("cannot delete the bench topics {topics:?}: {e}");
    }
}

/// What one consumer read.
struct Read {
    count: u64,
    bytes: u64,
    /// Messages that parsed as events (with `parse`).
    parsed: u64,
    secs: f64,
}

/// Reads every message of `partitions` of `topic` with one consumer, counting payload bytes;
/// with `parse`, also copies each message and parses it as the job's source does. With `start`,
/// waits there once the consumer is set up (always, even when that failed), then times the read
/// from its assignment on.
fn raw_consume(
    brokers: &str,
    topic: &str,
    partitions: &[i32],
    parse: bool,
    start: Option<&Barrier>,
) -> Result<Read, String> {
    let ready = consumer_at_start(brokers, topic, partitions, parse);
    if let Some(start) = start {
        start.wait();
    }
    let (consumer, ends, tpl) = ready?;
    let started = Instant::now();
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let (mut count, mut bytes, mut parsed) = (0u64, 0u64, 0u64);
    let mut left = ends.iter().filter(|e| **e > 0).count();
    while left > 0 {
        if started.elapsed() > Duration::from_secs(600) {
            return Err("raw consumption timed out".into());
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.map_err(|e| e.to_string())?;
        count += 1;
        bytes += m.payload().map_or(0, <[u8]>::len) as u64;
        if parse {
            let rec = RawRecord {
                partition: m.partition() as u32,
                offset: m.offset() as u64,
                bytes: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            };
            parsed += u64::from(parse_record(rec).is_ok());
        }
        if m.offset() + 1 == ends[m.partition() as usize] {
            left -= 1;
        }
    }
    Ok(Read {
        count,
        bytes,
        parsed,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// [`raw_consume`]'s consumer, created and its partitions' end offsets fetched: (consumer,
/// end offset by partition, the assignment from the beginning), not yet assigned.
fn consumer_at_start(
    brokers: &str,
    topic: &str,
    partitions: &[i32],
    parse: bool,
) -> Result<(BaseConsumer, Vec<i64>, TopicPartitionList), String> {
    let mut ours = vec![
        ("group.id", format!("{topic}-raw-{parse}-{}", partitions.len())),
        ("enable.auto.commit", "false".to_string()),
    ];
    if parse {
        // The job's source settings for a consumer that can fill its queue (a parsing one
        // can): with librdkafka's 1 s `fetch.queue.backoff.ms`, a full queue stalls the read
        // (3-4 s of the 1M topic spent in empty polls).
        ours.extend(PREFETCH_OPTIONS.map(|(k, v)| (k, v.to_string())));
    }
    let consumer: BaseConsumer = client_config(brokers, &ours, &[], ClientKind::Consumer)?
        .create()
        .map_err(|e| e.to_string())?;
    let mut ends = vec![0; PARTITIONS as usize];
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        ends[p as usize] = high;
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    Ok((consumer, ends, tpl))
}
