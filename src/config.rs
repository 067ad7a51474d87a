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

/// Days from 1970-01-01 to the proleptic Gregorian date `year-month-day` (Howard Hinnant's
/// `days_from_civil`); `month` 1..=12, `day` 1..=31.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A Unix time in ms as ISO 8601 UTC, to the second (`2023-11-14T22:13:20Z`; the civil date
/// from days since 1970-01-01 as in Howard Hinnant's `civil_from_days`).
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Parses a point in time into ms since the Unix epoch: an RFC 3339 time with its offset
/// (`2026-12-07T10:00:00Z`, `2026-12-07T11:00:00.250+01:00`), a date alone (its midnight,
/// UTC: `2026-12-07`) or a number of ms since the epoch (`1796637600000`). A fraction finer
/// than a millisecond rounds up (Kafka's timestamps are whole ms: the time's own millisecond
/// is then before it). A time without an offset is refused: whose local time it is would be
/// a guess.
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let bad = |why: &str| {
        format!(
            "bad time {text:?}: {why} (expected an RFC 3339 time such as 2026-12-07T10:00:00Z or \
             2026-12-07T11:00:00+01:00, a date such as 2026-12-07, or ms since the Unix epoch)"
        )
    };
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().map_err(|_| bad("too large"));
    }
    let b = t.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    let (Some(year), true, Some(month), true, Some(day)) =
        (digits(0, 4), sep(4, b"-"), digits(5, 2), sep(7, b"-"), digits(8, 2))
    else {
        return Err(bad("no date YYYY-MM-DD at its start"));
    };
    if !(1..=12).contains(&month) {
        return Err(bad("no such month"));
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day < 1 || day > month_days[(month - 1) as usize] {
        return Err(bad("no such day in that month"));
    }
    let date_ms = days_from_civil(year, month, day) * 86_400_000;
    if b.len() == 10 {
        return Ok(date_ms);
    }
    if !sep(10, b"Tt ") {
        return Err(bad("expected T between the date and the time"));
    }
    let (Some(hour), true, Some(minute), true, Some(second)) = (
        digits(11, 2),
        sep(13, b":"),
        digits(14, 2),
        sep(16, b":"),
        digits(17, 2),
    ) else {
        return Err(bad("no time HH:MM:SS after the date"));
    };
    // 60: a leap second, which Unix time does not count (it reads as the next second's start).
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let mut at = 19;
    let mut frac_ms = 0;
    if sep(at, b".") {
        let n = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(bad("no digits after the decimal point"));
        }
        let frac = &b[at + 1..at + 1 + n];
        for (i, d) in frac.iter().take(3).enumerate() {
            frac_ms += i64::from(d - b'0') * [100, 10, 1][i];
        }
        if frac.iter().skip(3).any(|d| *d != b'0') {
            frac_ms += 1;
        }
        at += 1 + n;
    }
    let offset_ms = match b.get(at) {
        Some(b'Z' | b'z') if b.len() == at + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == at + 6 => {
            let (Some(oh), true, Some(om)) = (digits(at + 1, 2), sep(at + 3, b":"), digits(at + 4, 2)) else {
                return Err(bad("bad offset from UTC"));
            };
            if oh > 23 || om > 59 {
                return Err(bad("bad offset from UTC"));
            }
            let off = (oh * 60 + om) * 60_000;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        None => return Err(bad("no offset from UTC (Z or +HH:MM)")),
        Some(_) => return Err(bad("unexpected text after the time")),
    };
    Ok(date_ms + ((hour * 60 + minute) * 60 + second) * 1000 + frac_ms - offset_ms)
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
    fn times() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time_ms("1970-01-01"), Ok(0));
        assert_eq!(parse_time_ms("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time_ms("2023-11-14t22:13:20.5z"), Ok(1_700_000_000_500));
        assert_eq!(parse_time_ms("2023-11-14 23:13:20.123+01:00"), Ok(1_700_000_000_123));
        assert_eq!(parse_time_ms("2023-11-14T20:43:20-01:30"), Ok(1_700_000_000_000));
        // Below a millisecond rounds up; zeros do not.
        assert_eq!(parse_time_ms("2023-11-14T22:13:20.0001Z"), Ok(1_700_000_000_001));
        assert_eq!(parse_time_ms("2023-11-14T22:13:20.000000Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time_ms("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        assert_eq!(parse_time_ms("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time_ms("1969-12-31T23:59:59Z"), Ok(-1000));
        for bad in [
            "",
            "yesterday",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13Z",
            "2023-13-01",
            "2023-02-29",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0100",
            "2023-11-14T22:13:20Zx",
            "2023-11-14X22:13:20Z",
            "99999999999999999999",
            "-5",
        ] {
            let e = parse_time_ms(bad).expect_err(bad);
            assert!(e.starts_with("bad time") && e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        /// Every second from year 0 to 9999 formats and parses back to itself.
        #[test]
        fn formatted_times_parse_back(secs in -62_167_219_200i64..253_402_300_800) {
            let ms = secs * 1000;
            proptest::prop_assert_eq!(parse_time_ms(&format_utc(ms)), Ok(ms));
        }
    }

    #[test]
    fn job_config_rejects_unknown_fields() {
        let ok = r#"{"session":{"window_ms":1000},"source":{}}"#;
        assert!(serde_json::from_str::<JobConfig>(ok).is_ok());
        let bad = r#"{"session":{"window":1000},"source":{}}"#;
        assert!(serde_json::from_str::<JobConfig>(bad).is_err());
    }
}
