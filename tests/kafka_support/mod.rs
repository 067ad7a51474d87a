//! Shared helpers of the Kafka tests (real broker at `KAFKA_BROKERS`, default 127.0.0.1:9092).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use sessionflow::commands::generate_kafka::{produce, KafkaGenerateArgs};
use sessionflow::generate::{write_files, GenerateArgs};

/// The broker list of the tests.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// A name unique to this run (topics, groups).
pub fn unique(tag: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("sf-test-{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// Writes the generator's files for `args` and produces the same stream to `topic`.
pub fn produce_generated(args: &GenerateArgs, topic: &str) -> Vec<PathBuf> {
    produce_generated_with(args, topic, &[])
}

/// [`produce_generated`] with librdkafka `options` for the producer (as `-X` gives them).
pub fn produce_generated_with(args: &GenerateArgs, topic: &str, options: &[(&str, &str)]) -> Vec<PathBuf> {
    let summary = write_files(args).unwrap();
    let kafka = KafkaGenerateArgs {
        brokers: Some(brokers()),
        topic: Some(topic.to_string()),
        realtime: false,
        options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        kafka_config: None,
        connect_timeout: 60_000,
    };
    let produced = produce(args, &kafka, &brokers(), topic).unwrap();
    assert_eq!(
        produced.per_partition, summary.lines_per_partition,
        "per-partition counts differ from the files"
    );
    summary.files
}

/// The `sessionflow` binary with `args`.
pub fn sessionflow(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessionflow"));
    cmd.args(args);
    cmd
}

/// Runs `cmd` to completion within `timeout` (killed after); panics with its stderr on failure.
pub fn run_ok(mut cmd: Command, timeout: Duration) -> Output {
    let out = run_capture(&mut cmd, timeout);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` to completion within `timeout` (killed after) and returns its output.
pub fn run_capture(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_timeout(child, timeout)
}

/// Waits for `child` (reading its pipes on threads), killing it after `timeout`.
pub fn wait_timeout(mut child: Child, timeout: Duration) -> Output {
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = so.as_mut() {
            let _ = std::io::Read::read_to_end(s, &mut v);
        }
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = se.as_mut() {
            let _ = std::io::Read::read_to_end(s, &mut v);
        }
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let s = child.wait().unwrap();
            let err = t2.join().unwrap();
            panic!("timed out after {timeout:?} ({s}):\n{}", String::from_utf8_lossy(&err));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

/// A metadata/offsets client (no group unless given).
pub fn client(group: Option<&str>) -> BaseConsumer {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers())
        .set("enable.auto.commit", "false");
    if let Some(g) = group {
        cfg.set("group.id", g);
    }
    cfg.create().unwrap()
}

/// The number of partitions of `topic`.
pub fn partition_count(topic: &str) -> usize {
    let md = client(None)
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len())
}

/// The high watermarks of `topic`'s partitions. Retries for up to 30 s: right after a topic
/// was created (or the broker restarted) a partition may have no leader yet
/// (`NotLeaderForPartition`).
pub fn end_offsets(topic: &str, partitions: u32) -> Vec<i64> {
    let c = client(None);
    (0..partitions)
        .map(|p| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match c.fetch_watermarks(topic, p as i32, Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(e) if std::time::Instant::now() < deadline => {
                        eprintln!("end offset of {topic}/{p}: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("end offset of {topic}/{p}: {e}"),
                }
            }
        })
        .collect()
}

/// The committed `(offset, metadata)` of `group` on each partition (`None`: no commit).
pub fn committed(group: &str, topic: &str, partitions: u32) -> Vec<Option<(i64, String)>> {
    let c = client(Some(group));
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p as i32);
    }
    let mut last = None;
    for _ in 0..10 {
        match c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(got) => {
                return (0..partitions)
                    .map(|p| {
                        let e = got.find_partition(topic, p as i32).unwrap();
                        match e.offset() {
                            Offset::Offset(o) => Some((o, e.metadata().to_string())),
                            _ => None,
                        }
                    })
                    .collect()
            }
            // The group coordinator may still be loading right after the group's first use.
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("cannot read committed offsets: {last:?}");
}

/// The `frontier` of a sessionflow commit's metadata.
pub fn meta_frontier(meta: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(meta).unwrap_or_else(|e| panic!("metadata {meta:?}: {e}"));
    assert_eq!(v["v"], "sessionflow/1", "metadata {meta}");
    v["frontier"]
        .as_u64()
        .unwrap_or_else(|| panic!("metadata without frontier: {meta}"))
}

/// One consumed message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub partition: u32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The message timestamp (ms since the Unix epoch; the producer's create time by default).
    pub timestamp: Option<i64>,
}

/// Every message of `topic` below its current end offsets, in partition then offset order.
pub fn consume_all(topic: &str, partitions: u32) -> Vec<Msg> {
    let ends = end_offsets(topic, partitions);
    // librdkafka wants a group for assign(); nothing is committed under it.
    let group = unique("read");
    let c = client(Some(&group));
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut next: Vec<i64> = (0..partitions)
        .map(|p| c.fetch_watermarks(topic, p as i32, Duration::from_secs(10)).unwrap().0)
        .collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..partitions as usize).any(|p| next[p] < ends[p]) {
        assert!(Instant::now() < deadline, "consuming {topic} timed out");
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let p = m.partition() as usize;
        if m.offset() >= ends[p] {
            continue;
        }
        next[p] = m.offset() + 1;
        out.push(Msg {
            partition: p as u32,
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            timestamp: m.timestamp().to_millis(),
        });
    }
    out.sort_by_key(|m| (m.partition, m.offset));
    out
}

/// The output files of a run: the three of the spec and the experiment totals.
pub struct Files {
    pub output: PathBuf,
    pub dead: PathBuf,
    pub stats: PathBuf,
    pub experiments: PathBuf,
}

impl Files {
    pub fn new(dir: &Path, tag: &str) -> Files {
        Files {
            output: dir.join(format!("out-{tag}.jsonl")),
            dead: dir.join(format!("dead-{tag}.jsonl")),
            stats: dir.join(format!("stats-{tag}.json")),
            experiments: dir.join(format!("experiments-{tag}.jsonl")),
        }
    }

    pub fn flags(&self) -> Vec<String> {
        vec![
            "--output".into(),
            self.output.display().to_string(),
            "--dead-letter".into(),
            self.dead.display().to_string(),
            "--stats".into(),
            self.stats.display().to_string(),
            "--experiments".into(),
            self.experiments.display().to_string(),
        ]
    }

    pub fn read(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let r = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        (r(&self.output), r(&self.dead), r(&self.stats))
    }

    /// Asserts these files equal `expected`'s byte for byte (the messages start with `what`).
    pub fn assert_same(&self, expected: &(Vec<u8>, Vec<u8>, Vec<u8>), what: &str) {
        let got = self.read();
        assert!(got.0 == expected.0, "{what}: snapshots differ from replay");
        assert!(got.1 == expected.1, "{what}: dead letters differ from replay");
        assert_eq!(
            String::from_utf8_lossy(&got.2),
            String::from_utf8_lossy(&expected.2),
            "{what}: stats"
        );
    }

    /// Asserts these experiment totals equal `reference`'s byte for byte, and that there are
    /// some (the generated streams put sessions in experiments).
    pub fn assert_same_experiments(&self, reference: &Files, what: &str) {
        let r = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        let (got, expected) = (r(&self.experiments), r(&reference.experiments));
        assert!(!expected.is_empty(), "{what}: the reference has no experiment totals");
        assert!(got == expected, "{what}: experiment totals differ from replay");
    }

    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.stats).unwrap()).unwrap()
    }
}

/// `sessionflow replay` of `inputs` into `files`.
pub fn replay(inputs: &[PathBuf], files: &Files) {
    let mut args: Vec<String> = vec!["replay".into()];
    for i in inputs {
        args.push("--input".into());
        args.push(i.display().to_string());
    }
    args.extend(files.flags());
    run_ok(sessionflow(&args), Duration::from_secs(120));
}

/// The `run` flags of a bounded run on `topic` with `group`.
pub fn run_flags(topic: &str, group: &str, workers: usize) -> Vec<String> {
    vec![
        "run".into(),
        "--brokers".into(),
        brokers(),
        "--topic".into(),
        topic.into(),
        "--group".into(),
        group.into(),
        "--workers".into(),
        workers.to_string(),
        "--progress".into(),
        "0".into(),
    ]
}

/// Sends SIGTERM to `child` (a graceful stop of `sessionflow run`).
pub fn terminate(child: &Child) {
    let pid = child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(kill.unwrap().success());
}

/// Waits until `child`, a `sessionflow run` told to stop, exits (failing past `deadline`),
/// checks it stopped gracefully (status 0, the "stopped on a signal" line in its stderr file
/// `log`) and returns that log.
pub fn expect_graceful_exit(child: &mut Child, deadline: Instant, log: &Path) -> String {
    let read = || std::fs::read_to_string(log).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running at the deadline after SIGTERM: {}",
            read()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = read();
    assert!(status.success(), "exit {status} after SIGTERM: {text}");
    assert!(text.contains("run: stopped on a signal"), "{text}");
    text
}

/// Kills a child process when dropped (a failed assertion must not leave a job running);
/// `None` once the test took the child back to wait for it.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The address a `run --metrics` prints in its stderr file `log` (waiting for the line until
/// `deadline`).
pub fn metrics_address(log: &Path, deadline: Instant) -> String {
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("run: metrics at http://").nth(1) {
            return rest.split("/metrics").next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no metrics line: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One scrape of `http://{addr}/metrics`: each unlabelled sample's value by name, and the
/// whole text.
pub fn scrape(addr: &str) -> (std::collections::HashMap<String, f64>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    let body = reply.split_once("\r\n\r\n").unwrap().1.to_string();
    let values = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .map(|l| {
            let (name, v) = l.split_once(' ').unwrap();
            (name.to_string(), v.parse::<f64>().unwrap())
        })
        .collect();
    (values, body)
}

/// The value of the sample `series` (a name with its labels, `m{partition="1"}`) in a scrape's
/// text, if present.
pub fn labelled(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// The value of each config of `topic` (the broker's, defaults included).
pub fn topic_configs(topic: &str) -> std::collections::HashMap<String, String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = sessionflow_operators::source::kafka::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts),
    )
    .unwrap();
    let resource = results.into_iter().next().unwrap().unwrap();
    resource
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}
