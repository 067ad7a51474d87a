//! `sessionflow offsets`: where a consumer group of `run` stands on its topic, for a job that is
//! stopped (or running): each partition's committed offset, end offset and lag, and the cut
//! sessionflow committed with it (the window a restart resumes at, the partition's largest
//! event time before the cut). Read-only: it never joins the group nor commits.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use sessionflow_operators::source::kafka::{options_with_file, parse_option, GroupPosition, MetadataClient};

use crate::commands::run::{window_start, JobTopicArgs};
use crate::config::{format_utc, parse_duration_ms};

/// Flags of `sessionflow offsets`.
#[derive(Args, Clone, Debug)]
pub struct OffsetsArgs {
    /// The job's brokers, input topic and consumer group.
    #[command(flatten)]
    pub input: JobTopicArgs,
    /// The job's window length W (e.g. 60s), to date the windows its cuts name.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    pub window: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// A librdkafka option `key=value` (repeat), as for `run`.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// librdkafka options from a file, one `key=value` per line, as for `run`.
    #[arg(long, value_name = "FILE")]
    pub kafka_config: Option<PathBuf>,
    /// How long to keep retrying to reach the brokers (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
    pub connect_timeout: u64,
}

/// One partition of the report.
#[derive(Debug, PartialEq, Eq, Serialize)]
struct PartitionReport {
    partition: u32,
    /// The group's committed offset (`None`: none; the job starts the partition at `--start`).
    committed: Option<u64>,
    /// The partition's end offset.
    end: u64,
    /// Messages from the committed offset (else from the oldest kept) to the end.
    lag: u64,
    /// The frontier of the cut committed with the offset (window index), if sessionflow's.
    frontier: Option<u64>,
    /// The partition's largest valid event time before the cut (ms), if any.
    max_ts: Option<i64>,
}

/// The whole report.
#[derive(Debug, PartialEq, Eq, Serialize)]
struct Report {
    topic: String,
    group: String,
    /// The window a restart resumes at: the largest frontier committed for any partition.
    resume_window: Option<u64>,
    /// Messages left to read, over the partitions.
    lag: u64,
    partitions: Vec<PartitionReport>,
}

fn report(topic: &str, group: &str, positions: &[GroupPosition]) -> Report {
    let partitions: Vec<PartitionReport> = positions
        .iter()
        .map(|p| PartitionReport {
            partition: p.partition,
            committed: p.committed,
            end: p.high,
            lag: p.high.saturating_sub(p.committed.unwrap_or(p.low).max(p.low)),
            frontier: p.cut.as_ref().map(|c| c.frontier),
            max_ts: p.cut.as_ref().and_then(|c| c.max_ts),
        })
        .collect();
    Report {
        topic: topic.to_string(),
        group: group.to_string(),
        resume_window: partitions.iter().filter_map(|p| p.frontier).max(),
        lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    }
}

/// The report as a table, windows dated with `window_ms`.
fn table(r: &Report, window_ms: u64) -> String {
    let date = |w: u64| window_start(w, window_ms);
    let mut out = match r.resume_window {
        Some(w) => format!(
            "group {} on topic {}: a restart resumes at window {w} ({}); {} messages to read\n",
            r.group,
            r.topic,
            date(w),
            r.lag
        ),
        None => format!(
            "group {} on topic {}: no sessionflow commit; a run starts every partition at --start; {} messages from the oldest kept\n",
            r.group, r.topic, r.lag
        ),
    };
    out.push_str("partition  committed        end        lag  max event time before the cut\n");
    for p in &r.partitions {
        out.push_str(&format!(
            "{:>9}  {:>9}  {:>9}  {:>9}  {}\n",
            p.partition,
            p.committed.map_or("-".to_string(), |o| o.to_string()),
            p.end,
            p.lag,
            p.max_ts.map_or("-".to_string(), format_utc),
        ));
    }
    out
}

/// Prints where the job's group stands on its topic.
pub fn run(args: OffsetsArgs) -> Result<(), String> {
    let options = options_with_file(args.kafka_config.as_deref(), &args.options)?;
    let deadline = Instant::now() + Duration::from_millis(args.connect_timeout);
    let client = MetadataClient::new(&args.input.brokers, &options)?;
    let positions = client.group_positions(&args.input.topic, &args.input.group, deadline)?;
    let r = report(&args.input.topic, &args.input.group, &positions);
    if args.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    } else {
        print!("{}", table(&r, args.window));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionflow_operators::source::Cut;

    #[test]
    fn the_report_names_the_resume_window_and_the_lag() {
        let cut = |partition, offset, frontier| Cut {
            partition,
            offset,
            frontier,
            max_ts: Some(1_700_000_000_000),
        };
        let positions = [
            GroupPosition {
                partition: 0,
                committed: Some(90),
                cut: Some(cut(0, 90, 28_333_333)),
                low: 0,
                high: 100,
            },
            GroupPosition {
                partition: 1,
                committed: None,
                cut: None,
                low: 5,
                high: 20,
            },
            // Retention removed the committed offset: the lag counts what is kept.
            GroupPosition {
                partition: 2,
                committed: Some(3),
                cut: Some(cut(2, 3, 28_333_334)),
                low: 10,
                high: 12,
            },
        ];
        let r = report("t", "g", &positions);
        assert_eq!(r.resume_window, Some(28_333_334));
        assert_eq!(r.partitions.iter().map(|p| p.lag).collect::<Vec<_>>(), [10, 15, 2]);
        assert_eq!(r.lag, 27);
        let text = table(&r, 60_000);
        assert!(text.starts_with(
            "group g on topic t: a restart resumes at window 28333334 (2023-11-14T22:14:00Z); 27 messages to read\n"
        ));
        assert!(
            text.contains("        1          -         20         15  -\n"),
            "{text}"
        );
        assert!(text.contains("2023-11-14T22:13:20Z"), "{text}");
        let none = report("t", "g", &positions[1..2]);
        assert!(table(&none, 60_000).contains("no sessionflow commit"));
    }
}
