//! `run --metrics HOST:PORT`: the live job's figures in the Prometheus text format (0.0.4) at
//! `http://HOST:PORT/metrics`, for monitoring and alerting on a run that does not end.
//!
//! The figures are the progress line's, as counters and gauges: the spec's counters (events
//! read, accepted, duplicates, late, invalid; sessions opened and closed; snapshots), open
//! sessions and events waiting for their window, the consumers' lag, the event-time frontier
//! and the committed (durable) window, each also as the Unix time at which that window starts
//! (`time() - sessionflow_frontier_timestamp_seconds` is how far event time trails the clock),
//! and the offset commits. Every process of a cluster serves its own workers' figures (give
//! each its own address); sums over processes are the job's.
//!
//! The server is one thread of plain `std::net`, answering one request at a time (a scrape is
//! a few hundred bytes). A client has 2 s to send its request, however it trickles it, so a
//! stuck one delays the next scrape by that much at most, and never the job; the server stops
//! with the process.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use sessionflow_operators::session::VariationTotals;
use sessionflow_operators::sink::experiments::LatestTotals;
use sessionflow_operators::source::PartitionPosition;

use crate::stats::Stats;

/// One sample of the figures a process serves (summed over its workers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// The spec's counters so far.
    pub stats: Stats,
    /// Records read again after a restart whose window was already durable (records).
    pub skipped_on_resume: u64,
    /// Sessions open now (sessions).
    pub open_sessions: u64,
    /// Events waiting for their window to complete (events).
    pub pending_events: u64,
    /// Messages between the consumers' positions and the partitions' ends, once librdkafka's
    /// statistics reported it (messages).
    pub lag: Option<i64>,
    /// The smallest window any worker's source still holds: its event-time frontier (window
    /// index).
    pub frontier: Option<u64>,
    /// Commits are acknowledged for every window below this one (window index).
    pub committed: Option<u64>,
    /// Offset commits issued (commits).
    pub commits: u64,
    /// Offset commits issued again, not acknowledged within an interval (commits).
    pub commit_retries: u64,
    /// The snapshot topic's sinks, with `--snapshot-topic`.
    pub snapshot_sink: Option<KafkaSinkFigures>,
    /// The dead-letter topic's sinks, with `--dead-letter-topic`.
    pub dead_letter_sink: Option<KafkaSinkFigures>,
    /// The HBase sink, with `--hbase`.
    pub hbase: Option<HbaseFigures>,
    /// The input partitions this process's workers read, by partition.
    pub partitions: Vec<PartitionFigures>,
    /// The totals per experiment variation, with `--experiment-metrics` (process 0 only).
    pub experiments: Option<LatestTotals>,
}

/// One input partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionFigures {
    /// Where the source stands in it.
    pub position: PartitionPosition,
    /// Messages after its consumer's position, once librdkafka's statistics reported it
    /// (messages).
    pub lag: Option<i64>,
}

impl Sample {
    /// The partitions holding the frontier back (see [`PartitionPosition::holds`]) while
    /// another live partition is at least `gap` (>= 1) windows past it: the ones the output
    /// waits for. Empty when no live partition is that far ahead (with `gap` 1: every live
    /// partition is at the frontier, they advance together) or no frontier is known.
    pub fn holding(&self, gap: u64) -> Vec<&PartitionFigures> {
        let Some(frontier) = self.frontier else {
            return Vec::new();
        };
        let live = self.partitions.iter().filter(|p| p.position.live());
        if live.clone().all(|p| p.position.window < frontier.saturating_add(gap)) {
            return Vec::new();
        }
        live.filter(|p| p.position.holds(frontier)).collect()
    }
}

/// One Kafka output's sinks, summed over the process's workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KafkaSinkFigures {
    /// Messages the broker acknowledged (messages).
    pub acked: u64,
    /// Messages sent and not acknowledged yet (messages).
    pub in_flight: u64,
    /// Producers replaced after they had lost every broker (producers).
    pub replacements: u64,
}

/// The HBase sink's figures (the process's writer threads together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HbaseFigures {
    /// Rows HBase acknowledged (rows).
    pub rows: u64,
    /// `mutateRowsTs` calls HBase acknowledged (calls).
    pub calls: u64,
    /// Failed attempts that were retried (attempts).
    pub retries: u64,
    /// Write jobs queued or in flight (jobs).
    pub in_flight: u64,
    /// Bytes of cell values queued or in flight (bytes).
    pub in_flight_bytes: u64,
}

/// What the `sessionflow_info` line names (fixed for a run).
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    /// Input topic.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// `--snapshot-topic`, if any.
    pub snapshot_topic: Option<String>,
    /// `--dead-letter-topic`, if any.
    pub dead_letter_topic: Option<String>,
    /// This process's index in the cluster.
    pub process: usize,
    /// Processes in the cluster (count).
    pub processes: usize,
    /// Worker threads of this process (count).
    pub workers: usize,
    /// Window length W (ms).
    pub window_ms: u64,
    /// When the run started (seconds since the Unix epoch).
    pub start_time_s: f64,
}

/// A Kafka output metric: name, type, help, and its figure.
type KafkaMetric = (&'static str, &'static str, &'static str, fn(&KafkaSinkFigures) -> u64);

/// A per-partition metric: name, help, and its figure (given the partitions holding the
/// frontier back), if known.
type PartitionMetric = (
    &'static str,
    &'static str,
    fn(&PartitionFigures, &[u32]) -> Option<String>,
);

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Appends a metric's `# HELP` and `# TYPE` lines (writing to a `String` cannot fail).
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// The Prometheus text exposition of `sample`. Figures not known yet (no lag reported, no
/// window read or committed) are left out rather than given a made-up value.
pub fn render(info: &Info, sample: &Sample) -> String {
    let mut out = String::with_capacity(4096);
    let info_line = format!(
        "{{topic=\"{}\",group=\"{}\",process=\"{}\",processes=\"{}\",workers=\"{}\",window_ms=\"{}\",version=\"{}\"}} 1",
        label(&info.topic),
        label(&info.group),
        info.process,
        info.processes,
        info.workers,
        info.window_ms,
        env!("CARGO_PKG_VERSION"),
    );
    header(
        &mut out,
        "sessionflow_info",
        "gauge",
        "The run this process belongs to.",
    );
    // The name carries the labels: `sessionflow_info{...} 1`.
    let _ = writeln!(out, "sessionflow_info{info_line}");
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
    };
    let some = |v: u64| Some(v.to_string());
    let s = &sample.stats;
    let counters = [
        (
            "sessionflow_events_read_total",
            "Messages read (skipped_on_resume excluded).",
            s.events_read,
        ),
        (
            "sessionflow_events_accepted_total",
            "Events accepted into a session.",
            s.accepted,
        ),
        (
            "sessionflow_events_duplicate_total",
            "Events dropped as duplicates of an accepted event.",
            s.duplicates,
        ),
        (
            "sessionflow_events_late_total",
            "Events dead-lettered as session_closed.",
            s.late,
        ),
        (
            "sessionflow_events_invalid_total",
            "Messages dead-lettered as invalid.",
            s.invalid,
        ),
        (
            "sessionflow_events_skipped_on_resume_total",
            "Messages read again after a restart whose window was already durable.",
            sample.skipped_on_resume,
        ),
        (
            "sessionflow_sessions_opened_total",
            "Sessions opened.",
            s.sessions_opened,
        ),
        (
            "sessionflow_sessions_closed_total",
            "Sessions closed (merged-away gap sessions included).",
            s.sessions_closed,
        ),
        ("sessionflow_snapshots_total", "Snapshots emitted.", s.snapshots),
        (
            "sessionflow_offset_commits_total",
            "Offset commits issued.",
            sample.commits,
        ),
        (
            "sessionflow_offset_commit_retries_total",
            "Offset commits issued again (not acknowledged within an interval).",
            sample.commit_retries,
        ),
    ];
    for (name, help, v) in counters {
        metric(name, "counter", help, some(v));
    }
    let window_s = |w: u64| -> Option<String> {
        // A window's start in seconds; none when it overflows u64 milliseconds.
        let ms = w.checked_mul(info.window_ms)?;
        Some(format!("{}", ms as f64 / 1000.0))
    };
    let gauges = [
        (
            "sessionflow_open_sessions",
            "Sessions open now.",
            some(sample.open_sessions),
        ),
        (
            "sessionflow_pending_events",
            "Events waiting for their window to complete (read = accepted + duplicate + late + invalid + pending once nothing is in flight).",
            some(sample.pending_events),
        ),
        (
            "sessionflow_consumer_lag_messages",
            "Messages between the consumers' positions and the partitions' ends (librdkafka statistics).",
            sample.lag.map(|l| l.to_string()),
        ),
        (
            "sessionflow_start_time_seconds",
            "When the run started, seconds since the Unix epoch.",
            Some(format!("{:.3}", info.start_time_s)),
        ),
    ];
    for (name, help, v) in gauges {
        metric(name, "gauge", help, v);
    }
    // Each window as its index and as the Unix time it starts.
    for (what, window, help) in [
        (
            "frontier",
            sample.frontier,
            "Smallest window any source still holds (event-time frontier)",
        ),
        (
            "committed",
            sample.committed,
            "Every window below this one is durable and its offsets committed (acknowledged)",
        ),
    ] {
        metric(
            &format!("sessionflow_{what}_window"),
            "gauge",
            &format!("{help}, as a window index."),
            window.map(|w| w.to_string()),
        );
        metric(
            &format!("sessionflow_{what}_timestamp_seconds"),
            "gauge",
            &format!("Start of the {what} window, seconds since the Unix epoch."),
            window.and_then(window_s),
        );
    }
    // The input partitions this process reads: one line each, labelled with the partition.
    let holding: Vec<u32> = sample.holding(1).iter().map(|p| p.position.partition).collect();
    let per_partition: [PartitionMetric; 6] = [
        (
            "sessionflow_partition_lag_messages",
            "Messages after the consumer's position in the partition (librdkafka statistics).",
            |p, _| p.lag.map(|l| l.to_string()),
        ),
        (
            "sessionflow_partition_next_offset",
            "Next offset the source reads in the partition (once it read or resumed).",
            |p, _| p.position.next_offset.map(|o| o.to_string()),
        ),
        (
            "sessionflow_partition_watermark_window",
            "The partition's watermark window w(WM_p): windows below it are complete for it (from its first valid event).",
            |p, _| p.position.max_ts.map(|_| p.position.window.to_string()),
        ),
        (
            "sessionflow_partition_max_event_timestamp_seconds",
            "Largest valid event time read from the partition, seconds since the Unix epoch.",
            |p, _| p.position.max_ts.map(|t| format!("{}", t as f64 / 1000.0)),
        ),
        (
            "sessionflow_partition_idle",
            "1 while the partition is idle (--idle-timeout) and holds no window back.",
            |p, _| Some(u8::from(p.position.idle).to_string()),
        ),
        (
            "sessionflow_partition_holds_frontier",
            "1 while the partition holds the frontier back and another partition is past it: the output waits for it.",
            |p, holding| Some(u8::from(holding.contains(&p.position.partition)).to_string()),
        ),
    ];
    for (name, help, get) in per_partition {
        let mut first = true;
        for p in &sample.partitions {
            if let Some(v) = get(p, &holding) {
                if std::mem::take(&mut first) {
                    header(&mut out, name, "gauge", help);
                }
                let _ = writeln!(out, "{name}{{partition=\"{}\"}} {v}", p.position.partition);
            }
        }
    }
    // The Kafka outputs: one line per output, labelled with its kind and topic.
    let outputs: Vec<(String, KafkaSinkFigures)> = [
        ("snapshots", &info.snapshot_topic, sample.snapshot_sink),
        ("dead_letters", &info.dead_letter_topic, sample.dead_letter_sink),
    ]
    .into_iter()
    .filter_map(|(kind, topic, f)| {
        let labels = format!("{{sink=\"{kind}\",topic=\"{}\"}}", label(topic.as_deref()?));
        Some((labels, f.unwrap_or_default()))
    })
    .collect();
    let kafka: [KafkaMetric; 3] = [
        (
            "sessionflow_kafka_sink_acked_messages_total",
            "counter",
            "Messages of a Kafka output the broker acknowledged.",
            |f| f.acked,
        ),
        (
            "sessionflow_kafka_sink_in_flight_messages",
            "gauge",
            "Messages of a Kafka output sent and not acknowledged yet.",
            |f| f.in_flight,
        ),
        (
            "sessionflow_kafka_sink_producer_replacements_total",
            "counter",
            "Producers of a Kafka output replaced after they had lost every broker.",
            |f| f.replacements,
        ),
    ];
    if !outputs.is_empty() {
        for (name, kind, help, get) in kafka {
            header(&mut out, name, kind, help);
            for (labels, f) in &outputs {
                let _ = writeln!(out, "{name}{labels} {}", get(f));
            }
        }
    }
    if let Some(e) = &sample.experiments {
        render_experiments(&mut out, e);
    }
    if let Some(h) = sample.hbase {
        let hbase = [
            (
                "sessionflow_hbase_rows_total",
                "counter",
                "Rows HBase acknowledged.",
                h.rows,
            ),
            (
                "sessionflow_hbase_calls_total",
                "counter",
                "mutateRowsTs calls HBase acknowledged.",
                h.calls,
            ),
            (
                "sessionflow_hbase_retries_total",
                "counter",
                "Failed HBase writes that were retried.",
                h.retries,
            ),
            (
                "sessionflow_hbase_in_flight_jobs",
                "gauge",
                "HBase write jobs queued or in flight.",
                h.in_flight,
            ),
            (
                "sessionflow_hbase_in_flight_bytes",
                "gauge",
                "Bytes of cell values queued or in flight to HBase.",
                h.in_flight_bytes,
            ),
        ];
        for (name, kind, help, v) in hbase {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
    out
}

/// The experiment totals: the window they are as of, and per variation its sessions, sessions
/// with revenue, events and revenue (labels `project_id`, `experiment_id`, `variation_id`).
fn render_experiments(out: &mut String, e: &LatestTotals) {
    let Some(window) = e.window else {
        return;
    };
    header(
        out,
        "sessionflow_experiment_window",
        "gauge",
        "The window the experiment totals are as of (window index): every window below it and it are in them.",
    );
    let _ = writeln!(out, "sessionflow_experiment_window {window}");
    type Figure = fn(&VariationTotals) -> String;
    let figures: [(&str, &str, Figure); 4] = [
        (
            "sessionflow_experiment_sessions",
            "Sessions with the experiment variation (each session's latest snapshot; closed sessions count, merged ones do not).",
            |t| t.sessions.to_string(),
        ),
        (
            "sessionflow_experiment_sessions_with_revenue",
            "Of those, sessions whose revenue is above 0.",
            |t| t.sessions_with_revenue.to_string(),
        ),
        (
            "sessionflow_experiment_events",
            "Accepted events of those sessions.",
            |t| t.events.to_string(),
        ),
        (
            "sessionflow_experiment_revenue",
            "Revenue of those sessions (minor units).",
            |t| t.revenue.to_string(),
        ),
    ];
    for (name, help, get) in figures {
        header(out, name, "gauge", help);
        for (v, t) in &e.totals {
            let _ = writeln!(
                out,
                "{name}{{project_id=\"{}\",experiment_id=\"{}\",variation_id=\"{}\"}} {}",
                v.project_id,
                v.experiment_id,
                v.variation_id,
                get(t)
            );
        }
    }
}

/// Binds `addr` (`HOST:PORT`; port 0 picks a free one) and serves `GET /metrics` with
/// `render()` from a thread of its own; returns the bound address.
pub fn serve(addr: &str, render: impl Fn() -> String + Send + 'static) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics {addr}: cannot listen: {e}"))?;
    let bound = listener.local_addr().map_err(|e| format!("--metrics {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    // A client that goes away or stalls is that client's problem alone.
                    Ok(s) => {
                        let _ = answer(s, &render);
                    }
                    // Out of file descriptors, say: try again a little later, not in a spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .map_err(|e| format!("--metrics {addr}: cannot start its thread: {e}"))?;
    Ok(bound)
}

/// Longest request head read (bytes): a scrape's is a few hundred.
const MAX_HEAD: usize = 8192;

/// The status line, extra headers and body for a request head.
fn respond(head: &[u8], render: &dyn Fn() -> String) -> (&'static str, &'static str, String) {
    let text = String::from_utf8_lossy(head);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", "", render()),
        ("GET" | "HEAD", "/") => ("200 OK", "", "sessionflow: the metrics are at /metrics\n".into()),
        ("GET" | "HEAD", _) if target.starts_with('/') => ("404 Not Found", "", "not found: try /metrics\n".into()),
        (m, t) if !m.is_empty() && t.starts_with('/') => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD\n".into(),
        ),
        _ => ("400 Bad Request", "", "bad request\n".into()),
    }
}

/// The most time a client has for its request head: one that trickles its bytes cannot hold
/// the server, which answers one client at a time, for longer.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);

fn answer(mut stream: TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    stream.set_write_timeout(Some(HEAD_DEADLINE))?;
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        // Past the deadline the read fails (timed out) and the client gets no answer.
        let left = deadline.saturating_duration_since(Instant::now());
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, extra, body) = respond(&head, render);
    let head_only = head.starts_with(b"HEAD ");
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        reply.push_str(&body);
    }
    stream.write_all(reply.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info() -> Info {
        Info {
            topic: "clicks".into(),
            group: "g\"1\\".into(),
            snapshot_topic: Some("snaps".into()),
            dead_letter_topic: None,
            process: 0,
            processes: 2,
            workers: 3,
            window_ms: 60_000,
            start_time_s: 1_700_000_000.25,
        }
    }

    fn value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
    }

    #[test]
    fn every_figure_is_rendered_with_its_help_and_type() {
        let sample = Sample {
            stats: Stats {
                events_read: 10,
                accepted: 6,
                duplicates: 1,
                late: 2,
                invalid: 1,
                sessions_opened: 4,
                sessions_closed: 3,
                snapshots: 7,
            },
            skipped_on_resume: 5,
            open_sessions: 1,
            pending_events: 8,
            lag: Some(42),
            frontier: Some(28_333_337),
            committed: Some(28_333_335),
            commits: 9,
            commit_retries: 2,
            ..Sample::default()
        };
        let text = render(&info(), &sample);
        for (name, v) in [
            ("sessionflow_events_read_total", "10"),
            ("sessionflow_events_accepted_total", "6"),
            ("sessionflow_events_duplicate_total", "1"),
            ("sessionflow_events_late_total", "2"),
            ("sessionflow_events_invalid_total", "1"),
            ("sessionflow_events_skipped_on_resume_total", "5"),
            ("sessionflow_sessions_opened_total", "4"),
            ("sessionflow_sessions_closed_total", "3"),
            ("sessionflow_snapshots_total", "7"),
            ("sessionflow_offset_commits_total", "9"),
            ("sessionflow_offset_commit_retries_total", "2"),
            ("sessionflow_open_sessions", "1"),
            ("sessionflow_pending_events", "8"),
            ("sessionflow_consumer_lag_messages", "42"),
            ("sessionflow_frontier_window", "28333337"),
            ("sessionflow_frontier_timestamp_seconds", "1700000220"),
            ("sessionflow_committed_window", "28333335"),
            ("sessionflow_committed_timestamp_seconds", "1700000100"),
            ("sessionflow_start_time_seconds", "1700000000.250"),
        ] {
            assert_eq!(value(&text, name), Some(v), "{name} in\n{text}");
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(
            text.contains(
                "sessionflow_info{topic=\"clicks\",group=\"g\\\"1\\\\\",process=\"0\",processes=\"2\",workers=\"3\",window_ms=\"60000\",version=\""
            ),
            "{text}"
        );
        // Every sample line is `name value` or `name{labels} value`, after its HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn each_kafka_output_and_the_hbase_sink_get_their_own_lines() {
        let sample = Sample {
            snapshot_sink: Some(KafkaSinkFigures {
                acked: 12,
                in_flight: 3,
                replacements: 1,
            }),
            hbase: Some(HbaseFigures {
                rows: 40,
                calls: 2,
                retries: 5,
                in_flight: 1,
                in_flight_bytes: 2048,
            }),
            ..Sample::default()
        };
        let mut both = info();
        both.dead_letter_topic = Some("dead".into());
        let text = render(&both, &sample);
        for line in [
            "sessionflow_kafka_sink_acked_messages_total{sink=\"snapshots\",topic=\"snaps\"} 12",
            "sessionflow_kafka_sink_in_flight_messages{sink=\"snapshots\",topic=\"snaps\"} 3",
            "sessionflow_kafka_sink_producer_replacements_total{sink=\"snapshots\",topic=\"snaps\"} 1",
            // No worker reported for the dead-letter output yet: zeros, not a missing series.
            "sessionflow_kafka_sink_acked_messages_total{sink=\"dead_letters\",topic=\"dead\"} 0",
            "# TYPE sessionflow_kafka_sink_in_flight_messages gauge",
            "sessionflow_hbase_rows_total 40",
            "sessionflow_hbase_calls_total 2",
            "sessionflow_hbase_retries_total 5",
            "sessionflow_hbase_in_flight_jobs 1",
            "sessionflow_hbase_in_flight_bytes 2048",
            "# TYPE sessionflow_hbase_retries_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Each metric's HELP and TYPE once, however many outputs it has lines for.
        assert_eq!(
            text.matches("# TYPE sessionflow_kafka_sink_acked_messages_total ")
                .count(),
            1
        );
        // Without Kafka outputs or HBase, none of their lines.
        let mut none = info();
        none.snapshot_topic = None;
        let text = render(&none, &Sample::default());
        assert!(!text.contains("kafka_sink") && !text.contains("hbase"), "{text}");
    }

    #[test]
    fn figures_not_known_yet_are_left_out() {
        let text = render(&info(), &Sample::default());
        for name in [
            "sessionflow_consumer_lag_messages",
            "sessionflow_frontier_window",
            "sessionflow_frontier_timestamp_seconds",
            "sessionflow_committed_window",
            "sessionflow_committed_timestamp_seconds",
        ] {
            assert!(!text.contains(name), "{name} in\n{text}");
        }
        assert_eq!(value(&text, "sessionflow_events_read_total"), Some("0"));
        assert_eq!(value(&text, "sessionflow_open_sessions"), Some("0"));
    }

    #[test]
    fn experiment_totals_get_a_series_per_variation_once_a_window_is_in() {
        use sessionflow_operators::session::Variation;
        let mut latest = LatestTotals::default();
        let none = Sample {
            experiments: Some(latest.clone()),
            ..Sample::default()
        };
        assert!(!render(&info(), &none).contains("sessionflow_experiment"));
        let v = |e| Variation {
            project_id: 7,
            experiment_id: e,
            variation_id: 2,
        };
        let t = VariationTotals {
            sessions: 3,
            sessions_with_revenue: 1,
            events: 12,
            revenue: -40,
        };
        latest.apply(28_333_334, &[(v(11), t), (v(12), t)]);
        let text = render(
            &info(),
            &Sample {
                experiments: Some(latest),
                ..Sample::default()
            },
        );
        assert_eq!(value(&text, "sessionflow_experiment_window"), Some("28333334"));
        let series = |name: &str, e: u64| {
            format!("sessionflow_experiment_{name}{{project_id=\"7\",experiment_id=\"{e}\",variation_id=\"2\"}} ")
        };
        for e in [11, 12] {
            for (name, v) in [
                ("sessions", "3"),
                ("sessions_with_revenue", "1"),
                ("events", "12"),
                ("revenue", "-40"),
            ] {
                assert!(
                    text.contains(&format!("{}{v}\n", series(name, e))),
                    "{name} {e} in\n{text}"
                );
            }
        }
        assert_eq!(text.matches("# TYPE sessionflow_experiment_sessions gauge").count(), 1);
    }

    fn part(partition: u32, window: u64, max_ts: Option<i64>, lag: Option<i64>) -> PartitionFigures {
        PartitionFigures {
            position: PartitionPosition {
                partition,
                next_offset: max_ts.map(|_| 100 + u64::from(partition)),
                window,
                max_ts,
                ended: false,
                idle: false,
            },
            lag,
        }
    }

    #[test]
    fn the_partitions_holding_the_frontier_are_the_live_ones_at_it_while_others_are_past() {
        let mut sample = Sample {
            frontier: Some(10),
            partitions: vec![part(0, 10, Some(600_000), None), part(1, 10, Some(600_000), None)],
            ..Sample::default()
        };
        // Together at the frontier: nothing singled out.
        assert!(sample.holding(1).is_empty());
        sample.partitions[1].position.window = 12;
        let held: Vec<u32> = sample.holding(1).iter().map(|p| p.position.partition).collect();
        assert_eq!(held, [0]);
        // Below the frontier (a resumed job's frontier is its resume point) holds it too.
        sample.partitions.push(part(2, 0, None, None));
        let held: Vec<u32> = sample.holding(1).iter().map(|p| p.position.partition).collect();
        assert_eq!(held, [0, 2]);
        // Idle and ended partitions hold nothing back, nor count as past it.
        sample.partitions[0].position.idle = true;
        sample.partitions[2].position.ended = true;
        assert!(sample.holding(1).is_empty());
        sample.frontier = None;
        sample.partitions[0].position.idle = false;
        assert!(sample.holding(1).is_empty());
    }

    #[test]
    fn each_partition_gets_its_own_lines_and_unknown_figures_are_left_out() {
        let sample = Sample {
            frontier: Some(28_333_337),
            partitions: vec![
                part(0, 28_333_337, Some(1_700_000_250_500), Some(7)),
                part(3, 28_333_339, Some(1_700_000_370_000), Some(0)),
                part(5, 0, None, None),
            ],
            ..Sample::default()
        };
        let text = render(&info(), &sample);
        for (name, v) in [
            ("sessionflow_partition_lag_messages{partition=\"0\"}", "7"),
            ("sessionflow_partition_lag_messages{partition=\"3\"}", "0"),
            ("sessionflow_partition_next_offset{partition=\"3\"}", "103"),
            ("sessionflow_partition_watermark_window{partition=\"0\"}", "28333337"),
            (
                "sessionflow_partition_max_event_timestamp_seconds{partition=\"0\"}",
                "1700000250.5",
            ),
            ("sessionflow_partition_idle{partition=\"5\"}", "0"),
            ("sessionflow_partition_holds_frontier{partition=\"0\"}", "1"),
            ("sessionflow_partition_holds_frontier{partition=\"3\"}", "0"),
            ("sessionflow_partition_holds_frontier{partition=\"5\"}", "1"),
        ] {
            assert_eq!(value(&text, name), Some(v), "{name} in\n{text}");
        }
        for name in [
            "sessionflow_partition_lag_messages{partition=\"5\"}",
            "sessionflow_partition_next_offset{partition=\"5\"}",
            "sessionflow_partition_watermark_window{partition=\"5\"}",
            "sessionflow_partition_max_event_timestamp_seconds{partition=\"5\"}",
        ] {
            assert!(!text.contains(name), "{name} in\n{text}");
        }
        // One HELP and TYPE per metric, before its first line.
        for name in [
            "sessionflow_partition_lag_messages",
            "sessionflow_partition_holds_frontier",
        ] {
            assert_eq!(text.matches(&format!("# TYPE {name} gauge\n")).count(), 1, "{name}");
            let at = text.find(&format!("# HELP {name} ")).unwrap();
            assert!(at < text.find(&format!("{name}{{")).unwrap(), "{name}");
        }
        // No partition, no partition lines.
        assert!(!render(&info(), &Sample::default()).contains("sessionflow_partition_"));
    }

    #[test]
    fn a_window_too_far_for_milliseconds_has_no_timestamp() {
        let sample = Sample {
            frontier: Some(u64::MAX),
            ..Sample::default()
        };
        let text = render(&info(), &sample);
        assert_eq!(
            value(&text, "sessionflow_frontier_window"),
            Some(u64::MAX.to_string().as_str())
        );
        assert!(!text.contains("sessionflow_frontier_timestamp_seconds"));
    }

    #[test]
    fn requests_get_the_answer_their_method_and_path_ask_for() {
        let render = || "body\n".to_string();
        let status = |head: &str| respond(head.as_bytes(), &render).0;
        assert_eq!(
            respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &render).2,
            "body\n"
        );
        assert_eq!(status("GET /metrics?x=1 HTTP/1.1\r\n\r\n"), "200 OK");
        assert_eq!(status("HEAD /metrics HTTP/1.1\r\n\r\n"), "200 OK");
        assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), "200 OK");
        assert_eq!(status("GET /other HTTP/1.1\r\n\r\n"), "404 Not Found");
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), "405 Method Not Allowed");
        assert_eq!(status(""), "400 Bad Request");
        assert_eq!(status("\u{1}\u{2} garbage"), "400 Bad Request");
    }

    #[test]
    fn the_server_answers_over_tcp_and_survives_a_client_that_sends_nothing() {
        let addr = serve("127.0.0.1:0", || "sessionflow_up 1\n".to_string()).unwrap();
        // A client that connects and goes away without a request.
        drop(TcpStream::connect(addr).unwrap());
        let get = |req: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply
        };
        let reply = get("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("Content-Type: text/plain; version=0.0.4"), "{reply}");
        assert!(reply.contains("Content-Length: 17\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nsessionflow_up 1\n"), "{reply}");
        let head = get("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        assert!(get("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    }

    #[test]
    fn a_client_that_trickles_its_request_cannot_hold_the_server() {
        let addr = serve("127.0.0.1:0", || "ok\n".to_string()).unwrap();
        // One byte every 300 ms, never a whole head: without a deadline for the head this
        // client would hold the server (one client at a time) for 8192 bytes, ~40 minutes.
        let mut slow = TcpStream::connect(addr).unwrap();
        let trickler = std::thread::spawn(move || {
            for _ in 0..20 {
                if slow.write_all(b"G").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        let mut s = TcpStream::connect(addr).unwrap();
        // Far more than the head deadline (2 s), far less than the trickler's 6 s.
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.ends_with("\r\n\r\nok\n"), "{reply}");
        trickler.join().unwrap();
    }

    #[test]
    fn an_address_that_cannot_be_bound_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = serve(&addr, String::new).unwrap_err();
        assert!(e.starts_with(&format!("--metrics {addr}: cannot listen: ")), "{e}");
        let e = serve("not an address", String::new).unwrap_err();
        assert!(e.starts_with("--metrics not an address: cannot listen: "), "{e}");
    }
}
