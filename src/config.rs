//! Job configuration: serde structs (`deny_unknown_fields`, a unit on every field) and the
//! command-line flags that fill them.

use clap::Args;
use serde::{Deserialize, Serialize};
use sessionflow_operators::session::{Routing, SessionConfig};
use sessionflow_operators::source::SourceConfig;

/// Parses a duration like `60s`, `30m`, `1h`, `500ms` or a bare number of milliseconds, into ms.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 60s, 30m, 500ms"))?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s, m or h")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// The session flags shared by `replay`, `run` and `demo`.
#[derive(Args, Clone, Debug)]
pub struct SessionArgs {
    /// Window length W (e.g. 60s): snapshots are written once per window of event time.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    pub window: u64,
    /// Inactivity gap that closes a session (e.g. 30m).
    #[arg(long, default_value = "30m", value_parser = parse_duration_ms)]
    pub gap: u64,
    /// Out-of-orderness bound L of each partition's watermark (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    pub lateness: u64,
    /// Most events listed per snapshot (count, at most 10000); counters stay exact past it.
    #[arg(long, default_value_t = 1000)]
    pub max_events: usize,
}

/// Everything a job's dataflow needs to know (identical on every worker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Session semantics (window, gap, lateness in ms; max events).
    pub session: SessionConfig,
    /// Source settings (batch in records, throttle in windows).
    pub source: SourceConfig,
}

impl JobConfig {
    /// This job with the session routing for an input of `partitions` partitions read by
    /// `workers` workers ([`Routing::for_input`]). Every worker must get the same one.
    pub fn routed(&self, partitions: usize, workers: usize) -> JobConfig {
        let mut job = self.clone();
        job.session.routing = Routing::for_input(partitions, workers);
        job
    }

    /// The job for `session`, with a default source whose window and lateness are the
    /// session's (they must agree: the source assigns the windows the session operator keys on).
    pub fn for_session(session: SessionConfig) -> JobConfig {
        let source = SourceConfig {
            window_ms: session.window_ms,
            lateness_ms: session.lateness_ms,
            ..SourceConfig::default()
        };
        JobConfig { session, source }
    }
}

impl SessionArgs {
    /// The job configuration these flags describe.
    pub fn job(&self) -> Result<JobConfig, String> {
        let session = SessionConfig {
            window_ms: self.window,
            gap_ms: self.gap,
            lateness_ms: self.lateness,
            max_events: self.max_events,
            emit_state: false,
            // Chosen per input by the command (`Routing::for_input`).
            routing: Routing::Hash,
        };
        session.validate()?;
        Ok(JobConfig::for_session(session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("60s"), Ok(60_000));
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("42"), Ok(42));
        assert!(parse_duration_ms("5x").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("99999999999999999999h").is_err());
    }

    #[test]
    fn job_config_rejects_unknown_fields() {
        let ok = r#"{"session":{"window_ms":1000},"source":{}}"#;
        assert!(serde_json::from_str::<JobConfig>(ok).is_ok());
        let bad = r#"{"session":{"window":1000},"source":{}}"#;
        assert!(serde_json::from_str::<JobConfig>(bad).is_err());
    }
}
