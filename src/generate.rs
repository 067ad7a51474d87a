//! Seeded, deterministic, realistic synthetic click-stream generator (`sessionflow generate`).
//!
//! The output follows the input contract of `shared/spec/sessions.md`: one JSON object per line,
//! one file per partition (`p0.jsonl` ... `p{P-1}.jsonl`), lines in emission order.
//!
//! # Model
//!
//! Generation is a three-stage pipeline, each stage with its own ChaCha8 stream derived from
//! `--seed`, so the same flags always give byte-identical output:
//!
//! 1. **Sessions (event time).** Visits arrive as a Poisson process at `rate / mean_len` per
//!    second of event time (mean planned length ≈ 10 events), so that once the stream is
//!    established about `rate` events per second flow and about `rate × mean visit duration /
//!    mean_len` visits are open at once. A visit picks a project (Zipf sizes, s = 1.1), a
//!    visitor of that project (skewed: a few visitors return often; one already in a visit is
//!    avoided), a planned length (30 % bounces of 1 event, 69.5 % `2 + geometric(mean 11)`,
//!    0.5 % long fast-paced visits of 30..300 events, log-uniform, gaps × 0.3) and a landing
//!    page. Open visits sit in a bucket queue keyed by their next event time, so events come
//!    out in timestamp order. Gaps depend on the next event's type (decision: 0..40 ms, often
//!    the same millisecond as its pageview; click: log-normal, median 3 s; conversion: median
//!    6 s; pageview: median 12 s, heavy tail, capped at 25 min). Before a pageview, with
//!    probability 0.4 %, the visitor goes idle for 31..120 min: the client then starts a new
//!    session (new `session_id`, landing pageview; gap-based sessions split there in the
//!    engine), so the same visitor has several sessions.
//!
//!    The run's event budget is planned ahead: arrivals stop once the open visits' remaining
//!    events fill it, so visits are complete (only the last one admitted may be cut to fit, and
//!    an invalid line replaces the event it corrupts). Since no visit is in progress at
//!    `--start-ms`, the event rate ramps up over the first minutes, and it drains at the end,
//!    with a sparse tail of long and idle visits. With the defaults (1M lines) it peaks around
//!    1 800 events/s after ~7 min; longer runs or lower rates reach `--rate`.
//! 2. **Emission order.** Each event is emitted at its timestamp, except `--out-of-order` events
//!    (emitted 0.3..4.5 s later, within the 5 s lateness bound) and `--late` events (emitted
//!    20 s..1 h later, log-uniform; those beyond the session gap land in closed sessions).
//! 3. **Lines.** Exact quotas of `round(N × share)` duplicates and invalid lines are spread at
//!    random over the `N` lines. A duplicate is a byte copy of a recent line (mostly the last
//!    1024, sometimes one from minutes back), in another partition 10 % of the time. An invalid
//!    line is an event of stage 2 corrupted in one of many ways (see [`INVALID_KINDS`]).
//!
//! Content: visitors have stable ids and a stable device profile (browser, os, device,
//! country, language, ip, screen width), kept for the whole session in `attributes` (sent in
//! full on the first event, on some later ones, and when a value changes: `page_type` switches
//! mid-session in ~15 % of sessions, `logged_in` after a `signup`). Pageviews carry a `path`
//! (and `sku` on product pages) in `tags`, sometimes a scroll depth in `value`; clicks an
//! `element`; conversions a `name` (`add_to_cart`, `purchase`, `signup`, rarely `refund`)
//! with `revenue` in minor units on purchases (negative on refunds); `decision` events the
//! `experiments` a visitor is bucketed into (its variation is a stable hash of visitor and
//! experiment). About 5 % of visitors use a "verbose" SDK that writes `null` for absent
//! optional fields (the spec treats `null` as absent), including `"session_id":null` for
//! sessions without an id.
//!
//! Partitioning is that of a keyed Kafka producer with the Java default partitioner:
//! `murmur2(key) & 0x7fffffff % P`, where the key is the `session_id`, or
//! `"{project_id}:{visitor_id}"` for an event without one (see [`kafka_partition`]).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Smallest valid timestamp in the spec (ms since the Unix epoch).
const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
/// First invalid timestamp in the spec (ms since the Unix epoch).
const END_TIMESTAMP_MS: i64 = 4_102_444_800_000;
/// Longest valid line in the spec (bytes).
const MAX_LINE_BYTES: usize = 65_536;

/// Largest delay of an out-of-order event (ms); below the spec's default 5 s lateness bound.
pub const OUT_OF_ORDER_MAX_DELAY_MS: i64 = 4_500;
/// Smallest delay of a late event (ms).
pub const LATE_MIN_DELAY_MS: i64 = 20_000;
/// Largest delay of a late event (ms).
pub const LATE_MAX_DELAY_MS: i64 = 3_600_000;

const MINUTE_MS: i64 = 60_000;
/// Longest gap inside a session (ms): below the spec's 30 min session gap.
const MAX_IN_SESSION_GAP_MS: i64 = 25 * MINUTE_MS;
/// Probability that the visitor goes idle for > 30 min before a pageview (new session).
const IDLE_PROBABILITY: f64 = 0.004;
/// Share of duplicates copied into another partition (when there are several).
const CROSS_PARTITION_DUPLICATES: f64 = 0.1;
/// Recent lines kept for duplicates.
const RING_LINES: usize = 1024;
/// Older lines kept for duplicates, refreshed every `RESERVOIR_EVERY` valid lines.
const RESERVOIR_LINES: usize = 64;
const RESERVOIR_EVERY: u64 = 4096;

/// Session length model: share of 1-event bounces.
const BOUNCE_SHARE: f64 = 0.30;
/// Session length model: share of long visits (30..300 events).
const LONG_SHARE: f64 = 0.005;
/// Session length model: mean of the geometric part of normal visits (added to 2).
const NORMAL_EXTRA_MEAN: f64 = 11.0;
const LONG_MIN: f64 = 30.0;
const LONG_MAX: f64 = 300.0;
/// Long visits (power users) act faster: their gaps are scaled by this.
const LONG_GAP_SCALE: f64 = 0.3;

/// Arguments of `sessionflow generate`.
#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    /// Total number of lines to write (lines, all partitions together, including the injected
    /// duplicates and invalid lines).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub events: u64,
    /// Number of partitions, i.e. output files `p0.jsonl` ... `p{P-1}.jsonl` (count).
    #[arg(long, value_name = "P", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub partitions: u32,
    /// Output directory (path), created if missing; receives `p0.jsonl` ... `p{P-1}.jsonl`.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Random seed (unsigned 64-bit integer): the same flags give byte-identical files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Event time at which the first session starts (ms since the Unix epoch).
    #[arg(long, value_name = "MS", default_value_t = 1_700_000_000_000,
          value_parser = parse_start_ms)]
    pub start_ms: i64,
    /// Steady-state event rate (events per second of event time, all sessions together);
    /// with ~10 events per session this fixes how many sessions are open at once.
    #[arg(long, value_name = "EVENTS_PER_S", default_value_t = 2000.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Number of projects (count); their sizes are Zipf-skewed: a few big ones, a long tail.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub projects: u32,
    /// Mean visitor population per project (visitors); big projects get more, the tail fewer.
    #[arg(long, value_name = "VISITORS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000_000))]
    pub visitors_per_project: u32,
    /// Share of event lines emitted 0.3..4.5 s after their timestamp, within the 5 s
    /// lateness bound (fraction of event lines, 0..=1).
    #[arg(long, value_name = "SHARE", default_value_t = 0.05, value_parser = parse_share)]
    pub out_of_order: f64,
    /// Share of event lines emitted 20 s..1 h after their timestamp, beyond the lateness
    /// bound; some land in already closed sessions (fraction of event lines, 0..=1).
    #[arg(long, value_name = "SHARE", default_value_t = 0.002, value_parser = parse_share)]
    pub late: f64,
    /// Share of lines that are exact copies of an earlier line, sometimes in another partition
    /// (fraction of all lines, 0..=1).
    #[arg(long, value_name = "SHARE", default_value_t = 0.01, value_parser = parse_share)]
    pub duplicates: f64,
    /// Share of invalid lines: malformed JSON, wrong types, out-of-range values, missing
    /// fields, oversized lines (fraction of all lines, 0..=1).
    #[arg(long, value_name = "SHARE", default_value_t = 0.001, value_parser = parse_share)]
    pub invalid: f64,
    /// Share of sessions whose events omit `session_id`, so the engine forms gap-based
    /// sessions per (project_id, visitor_id) (fraction of sessions, 0..=1).
    #[arg(long, value_name = "SHARE", default_value_t = 0.05, value_parser = parse_share)]
    pub no_session_id: f64,
}

impl Default for GenerateArgs {
    /// The CLI defaults, writing into `./generated`.
    fn default() -> Self {
        Self {
            events: 1_000_000,
            partitions: 4,
            out_dir: PathBuf::from("generated"),
            seed: 42,
            start_ms: 1_700_000_000_000,
            rate: 2000.0,
            projects: 50,
            visitors_per_project: 1000,
            out_of_order: 0.05,
            late: 0.002,
            duplicates: 0.01,
            invalid: 0.001,
            no_session_id: 0.05,
        }
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a share between 0 and 1"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a positive rate"))
    }
}

/// Latest accepted `--start-ms`: leaves room for a long run before the spec's upper bound.
const LATEST_START_MS: i64 = END_TIMESTAMP_MS - 10 * 366 * 24 * 3_600_000;

fn parse_start_ms(s: &str) -> Result<i64, String> {
    let v: i64 = s.trim().parse().map_err(|e| format!("not an integer: {e}"))?;
    if (MIN_TIMESTAMP_MS..=LATEST_START_MS).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside [{MIN_TIMESTAMP_MS}, {LATEST_START_MS}] ms"))
    }
}

impl GenerateArgs {
    /// Checks the ranges the CLI parsers enforce, for arguments built in code.
    pub fn validate(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("--{name} must be a share between 0 and 1, got {v}"))
            }
        };
        share("out-of-order", self.out_of_order)?;
        share("late", self.late)?;
        share("duplicates", self.duplicates)?;
        share("invalid", self.invalid)?;
        share("no-session-id", self.no_session_id)?;
        if self.out_of_order + self.late > 1.0 {
            return Err("--out-of-order plus --late must not exceed 1".into());
        }
        if self.duplicates + self.invalid > 1.0 {
            return Err("--duplicates plus --invalid must not exceed 1".into());
        }
        if self.partitions == 0 || self.partitions > 65_536 {
            return Err(format!("--partitions must be in 1..=65536, got {}", self.partitions));
        }
        if self.projects == 0 || self.visitors_per_project == 0 {
            return Err("--projects and --visitors-per-project must be at least 1".into());
        }
        parse_rate(&self.rate.to_string()).map_err(|e| format!("--rate: {e}"))?;
        parse_start_ms(&self.start_ms.to_string()).map_err(|e| format!("--start-ms: {e}"))?;
        // The steady part of the run lasts about events / rate seconds of event time.
        let span_ms = self.events as f64 / self.rate * 1000.0;
        if self.start_ms as f64 + 2.0 * span_ms + 10.0 * 3_600_000.0 >= END_TIMESTAMP_MS as f64 {
            return Err("--events / --rate spans past the year 2100: raise --rate".into());
        }
        Ok(())
    }
}

/// What a run generated: line counts and how many of each injected kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    /// Lines generated (all partitions).
    pub lines: u64,
    /// Bytes generated, one newline per line included (as in the files).
    pub bytes: u64,
    /// Lines per partition, index = partition.
    pub lines_per_partition: Vec<u64>,
    /// Valid event lines that are not duplicates (each a distinct `event_id`).
    pub events: u64,
    /// Sessions started (a visitor idle for over 30 min starts a new one). Gap-based sessions
    /// of one visitor less than 30 min apart merge in the engine, so it may count fewer.
    pub sessions: u64,
    /// Of `sessions`, those whose events omit `session_id`.
    pub sessions_without_id: u64,
    /// Distinct visitors that started at least one session.
    pub visitors: u64,
    /// Most visits open at once in event time (a visit idle for over 30 min counts as open).
    pub peak_open_sessions: u64,
    /// Valid event lines without a `session_id` (duplicates excluded).
    pub events_without_session_id: u64,
    /// Valid event lines emitted after their timestamp within the lateness bound.
    pub out_of_order: u64,
    /// Valid event lines emitted more than the lateness bound after their timestamp.
    pub late: u64,
    /// Duplicate lines (exact copies of an earlier line).
    pub duplicates: u64,
    /// Of `duplicates`, those written to another partition than the original.
    pub duplicates_cross_partition: u64,
    /// Invalid lines.
    pub invalid: u64,
    /// Invalid lines per kind, in the order of [`INVALID_KINDS`].
    pub invalid_by_kind: Vec<(&'static str, u64)>,
    /// Smallest timestamp of a valid event line (ms since the Unix epoch; 0 when none).
    pub first_timestamp: i64,
    /// Largest timestamp of a valid event line (ms since the Unix epoch; 0 when none).
    pub last_timestamp: i64,
    /// Files written, index = partition (empty when generated through the iterator).
    pub files: Vec<PathBuf>,
}

/// The kinds of invalid lines, as reported in [`GenerateSummary::invalid_by_kind`]:
/// `malformed` (truncated, not JSON, single quotes, trailing comma, spaces only, invalid UTF-8,
/// raw control character), `wrong_type` (not an object, string/float where an integer is
/// due, object where an array is due, non-string tag ...), `out_of_range` (timestamps in
/// seconds, microseconds, 0 or 2100; negative or overflowing `project_id`; empty `type`;
/// over-long `event_id`; empty `session_id`; `NaN`, `Infinity`, `1e400`), `missing_field`
/// (`event_id` or `visitor_id` absent), `oversized` (valid JSON over 64 KiB).
pub const INVALID_KINDS: [&str; 5] = ["malformed", "wrong_type", "out_of_range", "missing_field", "oversized"];

/// Kafka's default partitioner, which `generate` follows (shared with the session operator's
/// [`Routing`](sessionflow_operators::session::Routing), which can follow it too).
pub use sessionflow_operators::session::routing::{kafka_partition, partition_key};

// ---------------------------------------------------------------------------------------------
// Small helpers: hashing, number formatting, sampling.

/// SplitMix64 finaliser: a bijection on u64 (distinct inputs give distinct ids).
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

#[inline]
fn push_i64(buf: &mut Vec<u8>, n: i64) {
    if n < 0 {
        buf.push(b'-');
    }
    push_u64(buf, n.unsigned_abs());
}

fn push_padded(buf: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = 1;
    let mut m = n / 10;
    while m > 0 {
        digits += 1;
        m /= 10;
    }
    for _ in digits..width {
        buf.push(b'0');
    }
    push_u64(buf, n);
}

fn hex16(v: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// Picks an index with probability proportional to `weights`, from `r` in `0..sum`.
fn pick(weights: &[u32], mut r: u32) -> usize {
    for (i, &w) in weights.iter().enumerate() {
        if r < w {
            return i;
        }
        r -= w;
    }
    weights.len().saturating_sub(1)
}

fn pick_rng(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    pick(weights, rng.random_range(0..total.max(1)))
}

fn pick_hash(h: u64, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    pick(weights, (h % u64::from(total.max(1))) as u32)
}

/// A uniform draw in (0, 1].
#[inline]
fn unit_open0(rng: &mut ChaCha8Rng) -> f64 {
    1.0 - rng.random::<f64>()
}

fn std_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = unit_open0(rng);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn log_normal(rng: &mut ChaCha8Rng, median: f64, sigma: f64) -> f64 {
    median * (sigma * std_normal(rng)).exp()
}

fn log_uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
}

fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    -unit_open0(rng).ln() * mean
}

/// Number of failures before a success, with the given mean.
fn geometric(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    let p = 1.0 / (1.0 + mean);
    let k = unit_open0(rng).ln() / (1.0 - p).ln();
    k.min(100_000.0) as u32
}

/// A planned visit length, and whether it is a long (fast-paced) visit.
fn sample_session_len(rng: &mut ChaCha8Rng) -> (u32, bool) {
    let r: f64 = rng.random();
    if r < BOUNCE_SHARE {
        (1, false)
    } else if r < 1.0 - LONG_SHARE {
        (2 + geometric(rng, NORMAL_EXTRA_MEAN), false)
    } else {
        (log_uniform(rng, LONG_MIN, LONG_MAX) as u32, true)
    }
}

fn mean_session_len() -> f64 {
    let long_mean = (LONG_MAX - LONG_MIN) / (LONG_MAX / LONG_MIN).ln();
    BOUNCE_SHARE + (1.0 - BOUNCE_SHARE - LONG_SHARE) * (2.0 + NORMAL_EXTRA_MEAN) + LONG_SHARE * long_mean
}

// ---------------------------------------------------------------------------------------------
// Realism tables.

const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];
const DEVICE_W: [u32; 3] = [55, 40, 5];
const OSES: [&str; 5] = ["windows", "macos", "linux", "android", "ios"];
const OS_W: [[u32; 5]; 3] = [[70, 25, 5, 0, 0], [0, 0, 0, 60, 40], [0, 0, 0, 40, 60]];
const BROWSERS: [&str; 5] = ["chrome", "safari", "firefox", "edge", "samsung"];
const BROWSER_W: [[u32; 5]; 5] = [
    [70, 0, 10, 20, 0],
    [40, 55, 5, 0, 0],
    [60, 0, 40, 0, 0],
    [80, 0, 0, 0, 20],
    [15, 85, 0, 0, 0],
];
const SCREENS: [[u16; 4]; 3] = [[1920, 1536, 1440, 2560], [390, 412, 360, 430], [820, 768, 1024, 800]];
/// (country, language, currency).
const COUNTRIES: [(&str, &str, &str); 16] = [
    ("US", "en-US", "USD"),
    ("GB", "en-GB", "GBP"),
    ("DE", "de-DE", "EUR"),
    ("FR", "fr-FR", "EUR"),
    ("IN", "en-IN", "INR"),
    ("BR", "pt-BR", "BRL"),
    ("CA", "en-CA", "CAD"),
    ("JP", "ja-JP", "JPY"),
    ("AU", "en-AU", "AUD"),
    ("NL", "nl-NL", "EUR"),
    ("ES", "es-ES", "EUR"),
    ("IT", "it-IT", "EUR"),
    ("MX", "es-MX", "MXN"),
    ("SE", "sv-SE", "SEK"),
    ("PL", "pl-PL", "PLN"),
    ("KR", "ko-KR", "KRW"),
];
const COUNTRY_W: [u32; 16] = [30, 8, 8, 6, 8, 6, 4, 5, 3, 3, 4, 4, 4, 2, 3, 2];
/// `None` is a direct visit (`"referrer":null`).
const REFERRERS: [Option<&str>; 7] = [
    None,
    Some("google"),
    Some("bing"),
    Some("facebook"),
    Some("newsletter"),
    Some("instagram"),
    Some("partner"),
];
const REFERRER_W: [u32; 7] = [40, 30, 4, 8, 6, 5, 7];

const HOME: u8 = 0;
const CATEGORY: u8 = 1;
const PRODUCT: u8 = 2;
const CART: u8 = 3;
const CHECKOUT: u8 = 4;
const ACCOUNT: u8 = 5;
const BLOG: u8 = 6;
const SEARCH: u8 = 7;
const PAGE_TYPES: [&str; 8] = [
    "home", "category", "product", "cart", "checkout", "account", "blog", "search",
];
const LANDING_W: [u32; 8] = [35, 20, 30, 0, 0, 0, 10, 5];
/// Next page type given the current one.
const PAGE_NEXT_W: [[u32; 8]; 8] = [
    [5, 35, 30, 0, 0, 5, 10, 15],
    [10, 20, 55, 5, 0, 0, 0, 10],
    [10, 25, 35, 20, 0, 0, 0, 10],
    [10, 10, 30, 0, 50, 0, 0, 0],
    [40, 0, 30, 0, 0, 30, 0, 0],
    [50, 30, 20, 0, 0, 0, 0, 0],
    [30, 10, 20, 0, 0, 0, 40, 0],
    [0, 20, 60, 0, 0, 0, 0, 20],
];
const CATEGORIES: [&str; 8] = [
    "shoes",
    "shirts",
    "jackets",
    "bags",
    "watches",
    "sale",
    "new",
    "accessories",
];
const ELEMENTS: [&str; 8] = [
    "nav-link",
    "cta-button",
    "add-to-cart",
    "product-image",
    "search-box",
    "filter",
    "footer-link",
    "banner",
];
const PLANS: [&str; 3] = ["free", "trial", "pro"];
const BLOG_POSTS: u32 = 200;

// ---------------------------------------------------------------------------------------------
// Stage 1: sessions in event-time order.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pageview,
    Click,
    Conversion,
    Decision,
}

#[derive(Clone, Copy, Debug)]
struct Profile {
    device: u8,
    os: u8,
    browser: u8,
    country: u8,
    screen: u16,
    ip: u32,
}

#[derive(Clone, Copy, Debug)]
struct Session {
    visitor: u64,
    visitor_hex: [u8; 16],
    session_hex: [u8; 16],
    project: u32,
    partition: u32,
    remaining: u32,
    index: u32,
    /// Event index at which `page_type` switches to `new_page_type` (`u32::MAX`: never).
    change_at: u32,
    /// Bit j: experiment j of the project already decided in this session.
    decided: u32,
    page_item: u32,
    page: u8,
    landing: u8,
    new_page_type: u8,
    referrer: u8,
    cart: u8,
    next_kind: Kind,
    has_id: bool,
    verbose: bool,
    logged_in: bool,
    attrs_due: bool,
    /// A long visit: gaps scaled by `LONG_GAP_SCALE`.
    fast: bool,
    profile: Profile,
}

struct ExperimentDef {
    id: u64,
    variations: Vec<u64>,
}

struct Project {
    id_dec: Vec<u8>,
    visitor_base: u64,
    visitors: u64,
    catalog: u32,
    experiments: Vec<ExperimentDef>,
}

/// Seed-derived offsets that make the ids of two seeds differ.
struct Keys {
    event: u64,
    session: u64,
    visitor: u64,
    profile: u64,
    variation: u64,
}

/// What stage 1 tells about a rendered event.
#[derive(Clone, Copy, Debug)]
struct EvMeta {
    partition: u32,
    timestamp: i64,
    has_id: bool,
    /// 0: on time, 1: out of order, 2: late.
    delay: u8,
}

/// A bucket queue of `(timestamp, session slot)` for the open sessions: one bucket per
/// millisecond over the next `WHEEL_MS`, a heap for later entries. Much faster than a binary
/// heap here (~2 events per ms, most gaps under a minute). Entries of one millisecond pop in
/// reverse push order, which is deterministic.
struct Wheel {
    /// Every entry in `buckets` has its timestamp in `cursor..cursor + WHEEL_MS`.
    cursor: i64,
    buckets: Vec<Vec<u32>>,
    in_buckets: usize,
    later: BinaryHeap<Reverse<(i64, u32)>>,
}

const WHEEL_MS: i64 = 1 << 16;

impl Wheel {
    fn new(start: i64) -> Self {
        Wheel {
            cursor: start,
            buckets: (0..WHEEL_MS).map(|_| Vec::new()).collect(),
            in_buckets: 0,
            later: BinaryHeap::new(),
        }
    }

    #[inline]
    fn bucket(ts: i64) -> usize {
        (ts & (WHEEL_MS - 1)) as usize
    }

    /// Adds an entry; `ts` must not be before the last popped or limiting timestamp.
    fn push(&mut self, ts: i64, slot: u32) {
        debug_assert!(ts >= self.cursor);
        if ts < self.cursor + WHEEL_MS {
            self.buckets[Self::bucket(ts)].push(slot);
            self.in_buckets += 1;
        } else {
            self.later.push(Reverse((ts, slot)));
        }
    }

    /// Pops the earliest entry with a timestamp before `limit`; when there is none, every
    /// entry is at or after `limit` and later pushes may use timestamps from `limit` on.
    fn pop_before(&mut self, limit: i64) -> Option<(i64, u32)> {
        loop {
            while let Some(&Reverse((ts, slot))) = self.later.peek() {
                if ts >= self.cursor + WHEEL_MS {
                    break;
                }
                self.later.pop();
                self.buckets[Self::bucket(ts)].push(slot);
                self.in_buckets += 1;
            }
            if self.in_buckets == 0 {
                match self.later.peek() {
                    Some(&Reverse((ts, _))) if ts < limit => {
                        self.cursor = ts;
                        continue;
                    }
                    _ => {
                        if limit != i64::MAX {
                            self.cursor = self.cursor.max(limit);
                        }
                        return None;
                    }
                }
            }
            let horizon = self.later.peek().map_or(i64::MAX, |Reverse((ts, _))| *ts - WHEEL_MS);
            while self.cursor < limit {
                if let Some(slot) = self.buckets[Self::bucket(self.cursor)].pop() {
                    self.in_buckets -= 1;
                    return Some((self.cursor, slot));
                }
                self.cursor += 1;
                if self.cursor > horizon {
                    break;
                }
            }
            if self.cursor >= limit {
                return None;
            }
        }
    }
}

struct Source {
    rng: ChaCha8Rng,
    keys: Keys,
    partitions: u32,
    no_id_share: f64,
    projects: Vec<Project>,
    project_cum: Vec<f64>,
    sessions: Vec<Session>,
    free: Vec<u32>,
    wheel: Wheel,
    next_arrival: f64,
    arrival_mean_ms: f64,
    arrivals_open: bool,
    /// Events still to generate, and of those already planned for open sessions.
    budget: u64,
    planned: u64,
    event_counter: u64,
    session_counter: u64,
    sessions_started: u64,
    sessions_without_id: u64,
    open_sessions: u64,
    peak_open_sessions: u64,
    active_visitors: HashMap<u64, u32>,
    seen_visitors: HashSet<u64>,
    key_buf: Vec<u8>,
}

impl Source {
    fn new(cfg: &Config, events: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(1);
        let keys = Keys {
            event: rng.random(),
            session: rng.random(),
            visitor: rng.random(),
            profile: rng.random(),
            variation: rng.random(),
        };
        // Zipf project sizes.
        let weights: Vec<f64> = (0..cfg.projects)
            .map(|i| 1.0 / (f64::from(i) + 1.0).powf(1.1))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut project_cum = Vec::with_capacity(weights.len());
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            project_cum.push(acc);
        }
        let mut ids = HashSet::new();
        let mut projects = Vec::with_capacity(weights.len());
        let mut visitor_base = 0u64;
        let n_projects = weights.len();
        for (i, w) in weights.iter().enumerate() {
            let id = loop {
                let id = 1_000_000 + rng.random_range(0..9_999_000_000u64);
                if ids.insert(id) {
                    break id;
                }
            };
            let visitors = ((cfg.visitors_per_project as f64 * n_projects as f64 * w / total).round() as u64).max(1);
            let n_exp = if i * 10 < n_projects {
                rng.random_range(3..=6)
            } else {
                rng.random_range(0..=3)
            };
            let experiments = (0..n_exp)
                .map(|_| {
                    let id = 10_000_000_000 + rng.random_range(0..90_000_000_000u64);
                    let n_var = rng.random_range(2..=3u64);
                    ExperimentDef {
                        id,
                        variations: (1..=n_var).map(|v| id + v).collect(),
                    }
                })
                .collect();
            let mut id_dec = Vec::new();
            push_u64(&mut id_dec, id);
            projects.push(Project {
                id_dec,
                visitor_base,
                visitors,
                catalog: rng.random_range(200..=5000),
                experiments,
            });
            visitor_base += visitors;
        }
        let arrival_mean_ms = 1000.0 * mean_session_len() / cfg.rate;
        Source {
            rng,
            keys,
            partitions: cfg.partitions,
            no_id_share: cfg.no_id,
            projects,
            project_cum,
            sessions: Vec::new(),
            free: Vec::new(),
            wheel: Wheel::new(cfg.start_ms),
            next_arrival: cfg.start_ms as f64,
            arrival_mean_ms,
            arrivals_open: events > 0,
            budget: events,
            planned: 0,
            event_counter: 0,
            session_counter: 0,
            sessions_started: 0,
            sessions_without_id: 0,
            open_sessions: 0,
            peak_open_sessions: 0,
            active_visitors: HashMap::new(),
            seen_visitors: HashSet::new(),
            key_buf: Vec::with_capacity(64),
        }
    }

    /// The next event in timestamp order, rendered into `buf`.
    fn next(&mut self, buf: &mut Vec<u8>) -> Option<EvMeta> {
        loop {
            // Session events strictly before the next arrival go first.
            let limit = if self.arrivals_open {
                self.next_arrival as i64
            } else {
                i64::MAX
            };
            match self.wheel.pop_before(limit) {
                Some((ts, slot)) => return Some(self.emit(slot as usize, ts, buf)),
                None if self.arrivals_open => self.admit(limit),
                None => return None,
            }
        }
    }

    fn visitor_profile(&self, visitor: u64) -> Profile {
        let h = mix64(visitor ^ self.keys.profile);
        let device = pick_hash(h, &DEVICE_W);
        let h2 = mix64(h);
        let os = pick_hash(h2, &OS_W[device]);
        let browser = pick_hash(h2 >> 20, &BROWSER_W[os]);
        let country = pick_hash(h2 >> 40, &COUNTRY_W);
        let h3 = mix64(h2);
        let screen = SCREENS[device][(h3 & 3) as usize];
        Profile {
            device: device as u8,
            os: os as u8,
            browser: browser as u8,
            country: country as u8,
            screen,
            ip: public_ip(h3 >> 8),
        }
    }

    fn new_session_hex(&mut self) -> [u8; 16] {
        let id = self.session_counter;
        self.session_counter += 1;
        self.sessions_started += 1;
        hex16(mix64(id.wrapping_add(self.keys.session)))
    }

    fn partition_of(&mut self, s: &Session) -> u32 {
        if s.has_id {
            kafka_partition(&s.session_hex, self.partitions)
        } else {
            self.key_buf.clear();
            self.key_buf
                .extend_from_slice(&self.projects[s.project as usize].id_dec);
            self.key_buf.push(b':');
            self.key_buf.extend_from_slice(&s.visitor_hex);
            kafka_partition(&self.key_buf, self.partitions)
        }
    }

    /// Starts a visit at `ts` if the event budget has room for it.
    fn admit(&mut self, ts: i64) {
        let unplanned = self.budget - self.planned;
        if unplanned == 0 {
            self.arrivals_open = false;
            return;
        }
        let (len, fast) = sample_session_len(&mut self.rng);
        let len = u64::from(len).min(unplanned) as u32;
        let u: f64 = self.rng.random();
        let project = self
            .project_cum
            .partition_point(|&c| c < u)
            .min(self.projects.len() - 1);
        let (base, pop) = (self.projects[project].visitor_base, self.projects[project].visitors);
        // Skewed choice: a few visitors return often; avoid a visitor already in a session.
        let mut visitor = base;
        for _ in 0..4 {
            let u: f64 = self.rng.random();
            visitor = base + ((pop as f64 * u * u) as u64).min(pop - 1);
            if !self.active_visitors.contains_key(&visitor) {
                break;
            }
        }
        *self.active_visitors.entry(visitor).or_insert(0) += 1;
        self.seen_visitors.insert(visitor);
        let mut profile = self.visitor_profile(visitor);
        if self.rng.random_bool(0.1) {
            // The visitor is on another device this time.
            let device = pick_rng(&mut self.rng, &DEVICE_W);
            let os = pick_rng(&mut self.rng, &OS_W[device]);
            profile.device = device as u8;
            profile.os = os as u8;
            profile.browser = pick_rng(&mut self.rng, &BROWSER_W[os]) as u8;
            profile.screen = SCREENS[device][self.rng.random_range(0..4)];
        }
        if self.rng.random_bool(0.2) {
            profile.ip = public_ip(self.rng.random());
        }
        let vh = mix64(visitor ^ self.keys.visitor.rotate_left(7));
        let has_id = !self.rng.random_bool(self.no_id_share);
        if !has_id {
            self.sessions_without_id += 1;
        }
        let mut s = Session {
            visitor,
            visitor_hex: hex16(mix64(visitor.wrapping_add(self.keys.visitor))),
            session_hex: self.new_session_hex(),
            project: project as u32,
            partition: 0,
            remaining: len,
            index: 0,
            change_at: u32::MAX,
            decided: 0,
            page_item: 0,
            page: HOME,
            landing: HOME,
            new_page_type: HOME,
            referrer: 0,
            cart: 0,
            next_kind: Kind::Pageview,
            has_id,
            verbose: vh % 100 < 5,
            logged_in: (vh >> 8) % 100 < 25,
            attrs_due: true,
            fast,
            profile,
        };
        self.start_visit(&mut s);
        s.partition = self.partition_of(&s);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.sessions[slot as usize] = s;
                slot
            }
            None => {
                self.sessions.push(s);
                (self.sessions.len() - 1) as u32
            }
        };
        self.wheel.push(ts, slot);
        self.open_sessions += 1;
        self.peak_open_sessions = self.peak_open_sessions.max(self.open_sessions);
        self.planned += u64::from(len);
        self.next_arrival += exponential(&mut self.rng, self.arrival_mean_ms).max(0.0);
    }

    /// Resets the per-session state for a new (or renewed) session of the visit.
    fn start_visit(&mut self, s: &mut Session) {
        let rng = &mut self.rng;
        s.index = 0;
        s.decided = 0;
        s.cart = 0;
        s.attrs_due = true;
        s.next_kind = Kind::Pageview;
        s.referrer = pick_rng(rng, &REFERRER_W) as u8;
        s.landing = pick_rng(rng, &LANDING_W) as u8;
        s.page = s.landing;
        s.page_item = page_item(rng, s.page, self.projects[s.project as usize].catalog);
        s.change_at = u32::MAX;
        if s.remaining > 2 && rng.random_bool(0.15) {
            s.change_at = rng.random_range(1..s.remaining);
            s.new_page_type = (s.landing + rng.random_range(1..8u8)) % 8;
        }
    }

    /// Renders the next event of session `slot` at `ts` and schedules the one after.
    fn emit(&mut self, slot: usize, ts: i64, buf: &mut Vec<u8>) -> EvMeta {
        let mut s = self.sessions[slot];
        let id = self.event_counter;
        self.event_counter += 1;
        self.budget -= 1;
        self.planned -= 1;
        let kind = s.next_kind;
        render_event(
            &mut self.rng,
            &self.keys,
            &self.projects[s.project as usize],
            &mut s,
            id,
            ts,
            buf,
        );
        let meta = EvMeta {
            partition: s.partition,
            timestamp: ts,
            has_id: s.has_id,
            delay: 0,
        };
        s.remaining -= 1;
        s.index += 1;
        if s.remaining == 0 {
            if let Some(n) = self.active_visitors.get_mut(&s.visitor) {
                *n -= 1;
                if *n == 0 {
                    self.active_visitors.remove(&s.visitor);
                }
            }
            self.free.push(slot as u32);
            self.open_sessions -= 1;
            return meta;
        }
        // Schedule the next event.
        let project = &self.projects[s.project as usize];
        let n_exp = project.experiments.len() as u32;
        let undecided = !s.decided & ((1u32 << n_exp) - 1);
        let rng = &mut self.rng;
        s.next_kind = if kind == Kind::Pageview && undecided != 0 && rng.random_bool(0.5) {
            Kind::Decision
        } else {
            match rng.random_range(0..100u32) {
                0..50 => Kind::Pageview,
                50..86 => Kind::Click,
                _ => Kind::Conversion,
            }
        };
        let scale = if s.fast { LONG_GAP_SCALE } else { 1.0 };
        let gap = match s.next_kind {
            Kind::Decision => rng.random_range(0..=40),
            Kind::Click => (scale * log_normal(rng, 3_000.0, 1.0)) as i64,
            Kind::Conversion => (scale * log_normal(rng, 6_000.0, 1.0)) as i64,
            Kind::Pageview => (scale * log_normal(rng, 12_000.0, 1.3)) as i64,
        }
        .clamp(0, MAX_IN_SESSION_GAP_MS);
        let gap = if s.next_kind == Kind::Pageview && rng.random_bool(IDLE_PROBABILITY) {
            // Idle past the session gap: the client starts a new session.
            s.session_hex = self.new_session_hex();
            if !s.has_id {
                self.sessions_without_id += 1;
            }
            self.start_visit(&mut s);
            s.partition = self.partition_of(&s);
            self.rng.random_range(31 * MINUTE_MS..=120 * MINUTE_MS)
        } else {
            gap
        };
        self.sessions[slot] = s;
        self.wheel.push(ts + gap, slot as u32);
        meta
    }
}

/// An IPv4 address in public-looking space.
fn public_ip(h: u64) -> u32 {
    let mut a = 11 + (h % 212) as u32; // 11..=222
    if a == 127 || a == 100 || a == 172 || a == 192 || a == 169 {
        a += 1;
    }
    (a << 24) | ((h >> 8) as u32 & 0x00ff_ffff)
}

fn page_item(rng: &mut ChaCha8Rng, page: u8, catalog: u32) -> u32 {
    match page {
        CATEGORY => rng.random_range(0..CATEGORIES.len() as u32),
        PRODUCT => {
            let u: f64 = rng.random();
            ((f64::from(catalog) * u * u) as u32).min(catalog.saturating_sub(1))
        }
        BLOG => rng.random_range(0..BLOG_POSTS),
        _ => 0,
    }
}

fn push_sku(buf: &mut Vec<u8>, item: u32) {
    buf.extend_from_slice(b"SKU-");
    push_padded(buf, u64::from(item), 5);
}

fn push_path(buf: &mut Vec<u8>, page: u8, item: u32) {
    match page {
        HOME => buf.push(b'/'),
        CATEGORY => {
            buf.extend_from_slice(b"/c/");
            buf.extend_from_slice(CATEGORIES[item as usize % CATEGORIES.len()].as_bytes());
        }
        PRODUCT => {
            buf.extend_from_slice(b"/p/");
            push_sku(buf, item);
        }
        CART => buf.extend_from_slice(b"/cart"),
        CHECKOUT => buf.extend_from_slice(b"/checkout"),
        ACCOUNT => buf.extend_from_slice(b"/account"),
        BLOG => {
            buf.extend_from_slice(b"/blog/");
            push_u64(buf, u64::from(item));
        }
        SEARCH => buf.extend_from_slice(b"/search"),
        _ => buf.push(b'/'),
    }
}

fn push_str_field(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":\"");
    buf.extend_from_slice(value);
    buf.push(b'"');
}

/// The `value` of an event.
enum Value {
    Int(u64),
    /// Hundredths, rendered as a decimal fraction (`0.37`, `1.0`).
    Hundredths(u32),
}

enum Tags {
    None,
    Page,
    Click(u8),
    Cart(u32),
    Order { order: u64, items: Option<u8> },
    Signup(u8),
}

fn render_event(
    rng: &mut ChaCha8Rng,
    keys: &Keys,
    project: &Project,
    s: &mut Session,
    id: u64,
    ts: i64,
    buf: &mut Vec<u8>,
) {
    let kind = s.next_kind;
    let mut name: Option<&str> = None;
    let mut revenue: Option<i64> = None;
    let mut value: Option<Value> = None;
    let mut tags = Tags::None;
    let mut experiments: [Option<&ExperimentDef>; 2] = [None, None];
    let currency = COUNTRIES[s.profile.country as usize].2;
    match kind {
        Kind::Pageview => {
            if s.index > 0 {
                s.page = pick_rng(rng, &PAGE_NEXT_W[s.page as usize]) as u8;
                s.page_item = page_item(rng, s.page, project.catalog);
            }
            tags = Tags::Page;
            if rng.random_bool(0.25) {
                value = Some(Value::Hundredths(rng.random_range(5..=100)));
            }
        }
        Kind::Click => tags = Tags::Click(rng.random_range(0..ELEMENTS.len() as u8)),
        Kind::Conversion => {
            let r = rng.random_range(0..100u32);
            if (s.cart > 0 && r < 45) || (97..99).contains(&r) {
                let items = s.cart.max(1);
                let mut total = 0i64;
                for _ in 0..items {
                    total += (log_normal(rng, 2_500.0, 0.8) as i64).max(99);
                }
                name = Some("purchase");
                revenue = Some(total);
                value = Some(Value::Int(u64::from(items)));
                tags = Tags::Order {
                    order: rng.random(),
                    items: Some(items),
                };
                s.cart = 0;
            } else if r >= 99 {
                name = Some("refund");
                revenue = Some(-(log_normal(rng, 2_500.0, 0.8) as i64).max(99));
                tags = Tags::Order {
                    order: rng.random(),
                    items: None,
                };
            } else if r >= 80 && !s.logged_in {
                name = Some("signup");
                tags = Tags::Signup(rng.random_range(0..PLANS.len() as u8));
                s.logged_in = true;
                s.attrs_due = true;
            } else {
                name = Some("add_to_cart");
                let sku = if s.page == PRODUCT {
                    s.page_item
                } else {
                    page_item(rng, PRODUCT, project.catalog)
                };
                let qty = if rng.random_bool(0.8) {
                    1
                } else {
                    rng.random_range(2..=3)
                };
                value = Some(Value::Int(qty));
                tags = Tags::Cart(sku);
                s.cart = s.cart.saturating_add(1);
            }
        }
        Kind::Decision => {
            let n = project.experiments.len() as u32;
            let mut undecided = !s.decided & ((1u32 << n) - 1);
            let want = if rng.random_bool(0.25) { 2 } else { 1 };
            for e in experiments.iter_mut().take(want) {
                if undecided == 0 {
                    break;
                }
                let j = undecided.trailing_zeros();
                undecided &= !(1 << j);
                s.decided |= 1 << j;
                *e = project.experiments.get(j as usize);
            }
        }
    }

    let with_attrs = s.index == 0 || s.attrs_due || s.index == s.change_at || rng.random_bool(0.2);
    s.attrs_due = false;

    buf.clear();
    buf.extend_from_slice(b"{\"event_id\":\"");
    buf.extend_from_slice(&hex16(mix64(id.wrapping_add(keys.event))));
    buf.push(b'"');
    if s.has_id {
        push_str_field(buf, "session_id", &s.session_hex);
    } else if s.verbose {
        buf.extend_from_slice(b",\"session_id\":null");
    }
    push_str_field(buf, "visitor_id", &s.visitor_hex);
    buf.extend_from_slice(b",\"project_id\":");
    buf.extend_from_slice(&project.id_dec);
    buf.extend_from_slice(b",\"timestamp\":");
    push_i64(buf, ts);
    let type_name: &[u8] = match kind {
        Kind::Pageview => b"pageview",
        Kind::Click => b"click",
        Kind::Conversion => b"conversion",
        Kind::Decision => b"decision",
    };
    push_str_field(buf, "type", type_name);
    match name {
        Some(n) => push_str_field(buf, "name", n.as_bytes()),
        None if s.verbose => buf.extend_from_slice(b",\"name\":null"),
        None => {}
    }
    match revenue {
        Some(r) => {
            buf.extend_from_slice(b",\"revenue\":");
            push_i64(buf, r);
        }
        None if s.verbose => buf.extend_from_slice(b",\"revenue\":null"),
        None => {}
    }
    match value {
        Some(Value::Int(v)) => {
            buf.extend_from_slice(b",\"value\":");
            push_u64(buf, v);
        }
        Some(Value::Hundredths(h)) => {
            if h >= 100 {
                buf.extend_from_slice(b",\"value\":1.0");
            } else {
                buf.extend_from_slice(b",\"value\":0.");
                push_padded(buf, u64::from(h), 2);
            }
        }
        None if s.verbose => buf.extend_from_slice(b",\"value\":null"),
        None => {}
    }
    match tags {
        Tags::None => {}
        Tags::Page => {
            buf.extend_from_slice(b",\"tags\":{\"path\":\"");
            push_path(buf, s.page, s.page_item);
            buf.push(b'"');
            if s.page == PRODUCT {
                buf.extend_from_slice(b",\"sku\":\"");
                push_sku(buf, s.page_item);
                buf.push(b'"');
            }
            buf.push(b'}');
        }
        Tags::Click(e) => {
            buf.extend_from_slice(b",\"tags\":{\"path\":\"");
            push_path(buf, s.page, s.page_item);
            buf.extend_from_slice(b"\",\"element\":\"");
            buf.extend_from_slice(ELEMENTS[e as usize].as_bytes());
            buf.extend_from_slice(b"\"}");
        }
        Tags::Cart(sku) => {
            buf.extend_from_slice(b",\"tags\":{\"sku\":\"");
            push_sku(buf, sku);
            buf.extend_from_slice(b"\",\"path\":\"");
            push_path(buf, s.page, s.page_item);
            buf.extend_from_slice(b"\"}");
        }
        Tags::Order { order, items } => {
            buf.extend_from_slice(b",\"tags\":{\"order_id\":\"");
            buf.extend_from_slice(&hex16(order));
            buf.extend_from_slice(b"\",\"currency\":\"");
            buf.extend_from_slice(currency.as_bytes());
            buf.push(b'"');
            if let Some(items) = items {
                buf.extend_from_slice(b",\"items\":\"");
                push_u64(buf, u64::from(items));
                buf.push(b'"');
            }
            buf.push(b'}');
        }
        Tags::Signup(plan) => {
            buf.extend_from_slice(b",\"tags\":{\"plan\":\"");
            buf.extend_from_slice(PLANS[plan as usize].as_bytes());
            buf.extend_from_slice(b"\"}");
        }
    }
    if with_attrs {
        let p = &s.profile;
        let (country, language, _) = COUNTRIES[p.country as usize];
        buf.extend_from_slice(b",\"attributes\":{\"browser\":\"");
        buf.extend_from_slice(BROWSERS[p.browser as usize].as_bytes());
        buf.push(b'"');
        push_str_field(buf, "os", OSES[p.os as usize].as_bytes());
        push_str_field(buf, "device", DEVICES[p.device as usize].as_bytes());
        push_str_field(buf, "country", country.as_bytes());
        push_str_field(buf, "language", language.as_bytes());
        buf.extend_from_slice(b",\"ip\":\"");
        for (i, shift) in [24u32, 16, 8, 0].into_iter().enumerate() {
            if i > 0 {
                buf.push(b'.');
            }
            push_u64(buf, u64::from((p.ip >> shift) & 0xff));
        }
        buf.extend_from_slice(b"\",\"screen_width\":");
        push_u64(buf, u64::from(p.screen));
        buf.extend_from_slice(if s.logged_in {
            b",\"logged_in\":true"
        } else {
            b",\"logged_in\":false"
        });
        match REFERRERS[s.referrer as usize] {
            Some(r) => push_str_field(buf, "referrer", r.as_bytes()),
            None => buf.extend_from_slice(b",\"referrer\":null"),
        }
        let page_type = if s.index >= s.change_at {
            s.new_page_type
        } else {
            s.landing
        };
        push_str_field(buf, "page_type", PAGE_TYPES[page_type as usize].as_bytes());
        buf.push(b'}');
    }
    if experiments[0].is_some() {
        buf.extend_from_slice(b",\"experiments\":[");
        for (i, e) in experiments.iter().flatten().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            let n = e.variations.len() as u64;
            let v = e.variations[(mix64(s.visitor ^ e.id.rotate_left(17) ^ keys.variation) % n) as usize];
            buf.extend_from_slice(b"{\"experiment_id\":");
            push_u64(buf, e.id);
            buf.extend_from_slice(b",\"variation_id\":");
            push_u64(buf, v);
            buf.push(b'}');
        }
        buf.push(b']');
    } else if s.verbose {
        buf.extend_from_slice(b",\"experiments\":null");
    }
    buf.push(b'}');
}

// ---------------------------------------------------------------------------------------------
// Stage 2: emission order (out-of-order and late events).

struct Delayed {
    emit: i64,
    seq: u64,
    meta: EvMeta,
    line: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.emit, self.seq) == (other.emit, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    /// Reversed: the max-heap pops the earliest emission first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.emit, other.seq).cmp(&(self.emit, self.seq))
    }
}

struct Emission {
    rng: ChaCha8Rng,
    source: Source,
    ooo: f64,
    late: f64,
    delayed: BinaryHeap<Delayed>,
    clock: i64,
    seq: u64,
    source_done: bool,
}

impl Emission {
    /// The next event in emission order, rendered into `buf`.
    fn next(&mut self, buf: &mut Vec<u8>) -> Option<EvMeta> {
        loop {
            match self.delayed.peek() {
                Some(top) if self.source_done || top.emit <= self.clock => {
                    let d = self.delayed.pop()?;
                    buf.clear();
                    buf.extend_from_slice(&d.line);
                    return Some(d.meta);
                }
                None if self.source_done => return None,
                _ => {}
            }
            let Some(mut meta) = self.source.next(buf) else {
                self.source_done = true;
                continue;
            };
            let ts = meta.timestamp;
            self.clock = self.clock.max(ts);
            let r: f64 = self.rng.random();
            let emit = if r < self.ooo {
                meta.delay = 1;
                ts + self.rng.random_range(300..=OUT_OF_ORDER_MAX_DELAY_MS)
            } else if r < self.ooo + self.late {
                meta.delay = 2;
                ts + log_uniform(&mut self.rng, LATE_MIN_DELAY_MS as f64, LATE_MAX_DELAY_MS as f64) as i64
            } else {
                match self.delayed.peek() {
                    Some(top) if top.emit <= ts => ts,
                    _ => return Some(meta),
                }
            };
            self.seq += 1;
            // A copy of the exact size; `buf` keeps its capacity for the next lines.
            self.delayed.push(Delayed {
                emit,
                seq: self.seq,
                meta,
                line: buf.clone(),
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 3: lines (duplicates, invalid lines) and the public generator.

/// Arguments clamped into range (see [`Generator::new`]).
struct Config {
    seed: u64,
    lines: u64,
    partitions: u32,
    start_ms: i64,
    rate: f64,
    projects: u32,
    visitors_per_project: u32,
    ooo: f64,
    late: f64,
    dup: f64,
    invalid: f64,
    no_id: f64,
}

fn clamp_share(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 1.0)
    }
}

impl Config {
    fn from_args(a: &GenerateArgs) -> Self {
        let ooo = clamp_share(a.out_of_order);
        let late = clamp_share(a.late).min(1.0 - ooo);
        Config {
            seed: a.seed,
            lines: a.events,
            partitions: a.partitions.clamp(1, 65_536),
            start_ms: a.start_ms.clamp(MIN_TIMESTAMP_MS, LATEST_START_MS),
            rate: if a.rate.is_finite() && a.rate > 0.0 {
                a.rate
            } else {
                2000.0
            },
            projects: a.projects.max(1),
            visitors_per_project: a.visitors_per_project.max(1),
            ooo,
            late,
            dup: clamp_share(a.duplicates),
            invalid: clamp_share(a.invalid),
            no_id: clamp_share(a.no_session_id),
        }
    }
}

/// The generator: an iterator over `(partition, line)` in global emission order, lines without
/// their newline. Deterministic for given [`GenerateArgs`] (its `out_dir` is not used).
pub struct Generator {
    rng: ChaCha8Rng,
    partitions: u32,
    emission: Emission,
    lines_left: u64,
    invalid_left: u64,
    dup_left: u64,
    ring: Vec<(u32, Vec<u8>)>,
    ring_pos: usize,
    reservoir: Vec<(u32, Vec<u8>)>,
    valid_lines: u64,
    summary: GenerateSummary,
}

impl Generator {
    /// A generator for `args`. Out-of-range values are clamped (shares into 0..=1, at least
    /// one partition, project and visitor, a positive rate, a valid start); use
    /// [`GenerateArgs::validate`] to reject them instead.
    pub fn new(args: &GenerateArgs) -> Self {
        let cfg = Config::from_args(args);
        let lines = cfg.lines;
        let invalid = ((lines as f64 * cfg.invalid).round() as u64).min(lines);
        let mut dup = ((lines as f64 * cfg.dup).round() as u64).min(lines - invalid);
        if lines - invalid - dup == 0 && dup > 0 {
            // Keep one valid line to copy.
            dup -= 1;
        }
        let source = Source::new(&cfg, lines - dup);
        let mut emission_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        emission_rng.set_stream(2);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(3);
        let emission = Emission {
            rng: emission_rng,
            source,
            ooo: cfg.ooo,
            late: cfg.late,
            delayed: BinaryHeap::new(),
            clock: i64::MIN,
            seq: 0,
            source_done: false,
        };
        Generator {
            rng,
            partitions: cfg.partitions,
            emission,
            lines_left: lines,
            invalid_left: invalid,
            dup_left: dup,
            ring: Vec::new(),
            ring_pos: 0,
            reservoir: Vec::new(),
            valid_lines: 0,
            summary: GenerateSummary {
                lines_per_partition: vec![0; cfg.partitions as usize],
                invalid_by_kind: INVALID_KINDS.iter().map(|k| (*k, 0)).collect(),
                ..GenerateSummary::default()
            },
        }
    }

    /// Writes the next line (without newline) into `buf`, replacing its content, and returns
    /// its partition; `None` once all lines are generated.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> Option<u32> {
        if self.lines_left == 0 {
            return None;
        }
        buf.clear();
        let r = self.rng.random_range(0..self.lines_left);
        let partition = if r < self.invalid_left {
            let meta = self.emission.next(buf)?;
            self.invalid_left -= 1;
            let kind = corrupt(&mut self.rng, buf);
            self.summary.invalid += 1;
            self.summary.invalid_by_kind[kind].1 += 1;
            meta.partition
        } else if r < self.invalid_left + self.dup_left && !self.ring.is_empty() {
            self.dup_left -= 1;
            let from_reservoir = !self.reservoir.is_empty() && self.rng.random_bool(0.15);
            let (mut partition, line) = if from_reservoir {
                &self.reservoir[self.rng.random_range(0..self.reservoir.len())]
            } else {
                // Mostly the last few lines (a producer retry), sometimes further back.
                let u: f64 = self.rng.random();
                let back = ((self.ring.len() as f64) * u * u * u) as usize;
                let idx = (self.ring_pos + self.ring.len() - 1 - back.min(self.ring.len() - 1)) % self.ring.len();
                &self.ring[idx]
            }
            .clone();
            if self.partitions > 1 && self.rng.random_bool(CROSS_PARTITION_DUPLICATES) {
                partition = (partition + self.rng.random_range(1..self.partitions)) % self.partitions;
                self.summary.duplicates_cross_partition += 1;
            }
            *buf = line;
            self.summary.duplicates += 1;
            partition
        } else {
            let meta = self.emission.next(buf)?;
            self.record_valid(&meta, buf);
            meta.partition
        };
        self.lines_left -= 1;
        self.summary.lines += 1;
        self.summary.bytes += buf.len() as u64 + 1;
        self.summary.lines_per_partition[partition as usize] += 1;
        Some(partition)
    }

    fn record_valid(&mut self, meta: &EvMeta, line: &[u8]) {
        let s = &mut self.summary;
        if s.events == 0 {
            s.first_timestamp = meta.timestamp;
            s.last_timestamp = meta.timestamp;
        }
        s.events += 1;
        s.first_timestamp = s.first_timestamp.min(meta.timestamp);
        s.last_timestamp = s.last_timestamp.max(meta.timestamp);
        if !meta.has_id {
            s.events_without_session_id += 1;
        }
        match meta.delay {
            1 => s.out_of_order += 1,
            2 => s.late += 1,
            _ => {}
        }
        if self.dup_left == 0 {
            return;
        }
        self.valid_lines += 1;
        if self.ring.len() < RING_LINES {
            self.ring.push((meta.partition, line.to_vec()));
            self.ring_pos = self.ring.len() % RING_LINES;
        } else {
            let slot = &mut self.ring[self.ring_pos];
            slot.0 = meta.partition;
            slot.1.clear();
            slot.1.extend_from_slice(line);
            self.ring_pos = (self.ring_pos + 1) % RING_LINES;
        }
        if self.valid_lines.is_multiple_of(RESERVOIR_EVERY) {
            if self.reservoir.len() < RESERVOIR_LINES {
                self.reservoir.push((meta.partition, line.to_vec()));
            } else {
                let i = self.rng.random_range(0..RESERVOIR_LINES);
                self.reservoir[i] = (meta.partition, line.to_vec());
            }
        }
    }

    /// Counts so far (complete once the iterator is exhausted); `files` is left empty.
    pub fn summary(&self) -> GenerateSummary {
        let src = &self.emission.source;
        GenerateSummary {
            sessions: src.sessions_started,
            sessions_without_id: src.sessions_without_id,
            visitors: src.seen_visitors.len() as u64,
            peak_open_sessions: src.peak_open_sessions,
            ..self.summary.clone()
        }
    }

    /// Number of partitions lines are spread over.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }
}

impl Iterator for Generator {
    type Item = (u32, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = Vec::with_capacity(384);
        let partition = self.next_line(&mut buf)?;
        Some((partition, buf))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.lines_left).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid lines.

/// Where the value of top-level-ish field `key` sits in a rendered line: `(key_start,
/// value_start, value_end)`. Only for lines this module rendered (no escapes, no braces in
/// strings).
fn find_field(buf: &[u8], key: &str) -> Option<(usize, usize, usize)> {
    let mut pat = Vec::with_capacity(key.len() + 3);
    pat.push(b'"');
    pat.extend_from_slice(key.as_bytes());
    pat.extend_from_slice(b"\":");
    let start = buf.windows(pat.len()).position(|w| w == pat.as_slice())?;
    let vs = start + pat.len();
    let first = *buf.get(vs)?;
    let ve = match first {
        b'"' => vs + 1 + buf[vs + 1..].iter().position(|&b| b == b'"')? + 1,
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut end = None;
            for (i, &b) in buf[vs..].iter().enumerate() {
                match b {
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(vs + i + 1);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end?
        }
        _ => vs + buf[vs..].iter().position(|&b| b == b',' || b == b'}' || b == b']')?,
    };
    Some((start, vs, ve))
}

/// Sets field `key` to the raw JSON `value`: replaced when present, else added at the end.
fn set_field(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    if let Some((_, vs, ve)) = find_field(buf, key) {
        buf.splice(vs..ve, value.iter().copied());
    } else if buf.last() == Some(&b'}') {
        let at = buf.len() - 1;
        let mut ins = Vec::with_capacity(key.len() + value.len() + 4);
        ins.extend_from_slice(b",\"");
        ins.extend_from_slice(key.as_bytes());
        ins.extend_from_slice(b"\":");
        ins.extend_from_slice(value);
        buf.splice(at..at, ins);
    }
}

fn remove_field(buf: &mut Vec<u8>, key: &str) {
    if let Some((ks, _, ve)) = find_field(buf, key) {
        if buf.get(ve) == Some(&b',') {
            buf.drain(ks..=ve);
        } else if ks > 0 && buf[ks - 1] == b',' {
            buf.drain(ks - 1..ve);
        } else {
            buf.drain(ks..ve);
        }
    }
}

/// Inserts `bytes` just inside the `event_id` string.
fn insert_in_event_id(buf: &mut Vec<u8>, bytes: &[u8]) {
    if let Some((_, vs, _)) = find_field(buf, "event_id") {
        buf.splice(vs + 1..vs + 1, bytes.iter().copied());
    }
}

fn field_number(buf: &[u8], key: &str) -> i64 {
    find_field(buf, key)
        .and_then(|(_, vs, ve)| std::str::from_utf8(&buf[vs..ve]).ok()?.parse().ok())
        .unwrap_or(1_700_000_000_000)
}

/// Turns the valid rendered event in `buf` into an invalid line; returns the index of its kind
/// in [`INVALID_KINDS`].
fn corrupt(rng: &mut ChaCha8Rng, buf: &mut Vec<u8>) -> usize {
    const MALFORMED: usize = 0;
    const WRONG_TYPE: usize = 1;
    const OUT_OF_RANGE: usize = 2;
    const MISSING: usize = 3;
    const OVERSIZED: usize = 4;
    let mut num = Vec::with_capacity(24);
    match rng.random_range(0..30u32) {
        0 | 1 => {
            // Cut short (a proper prefix of an object is never valid JSON).
            let cut = rng.random_range(1..buf.len().max(2));
            buf.truncate(cut);
            MALFORMED
        }
        2 => {
            let ts = field_number(buf, "timestamp");
            buf.clear();
            buf.extend_from_slice(b"GET /collect?v=1&t=pageview&ts=");
            push_i64(buf, ts);
            buf.extend_from_slice(b" HTTP/1.1");
            MALFORMED
        }
        3 => {
            for b in buf.iter_mut() {
                if *b == b'"' {
                    *b = b'\'';
                }
            }
            MALFORMED
        }
        4 => {
            let at = buf.len() - 1;
            buf.insert(at, b',');
            MALFORMED
        }
        5 => {
            buf.clear();
            buf.resize(rng.random_range(1..=8), b' ');
            MALFORMED
        }
        6 => {
            insert_in_event_id(buf, &[0xff, 0xfe]);
            MALFORMED
        }
        7 => {
            insert_in_event_id(buf, b"\t");
            MALFORMED
        }
        8 => {
            buf.insert(0, b'[');
            buf.push(b']');
            WRONG_TYPE
        }
        9 => {
            buf.clear();
            buf.extend_from_slice(if rng.random_bool(0.5) { b"null" } else { b"\"pageview\"" });
            WRONG_TYPE
        }
        10 => {
            if let Some((_, vs, ve)) = find_field(buf, "project_id") {
                let digits = buf[vs..ve].to_vec();
                num.push(b'"');
                num.extend_from_slice(&digits);
                num.push(b'"');
                set_field(buf, "project_id", &num);
            }
            WRONG_TYPE
        }
        11 => {
            set_field(buf, "project_id", b"-7");
            OUT_OF_RANGE
        }
        12 => {
            set_field(buf, "project_id", b"18446744073709551616");
            OUT_OF_RANGE
        }
        13 => {
            num.push(b'"');
            push_i64(&mut num, field_number(buf, "timestamp"));
            num.push(b'"');
            set_field(buf, "timestamp", &num);
            WRONG_TYPE
        }
        14 => {
            push_i64(&mut num, field_number(buf, "timestamp"));
            num.extend_from_slice(b".0");
            set_field(buf, "timestamp", &num);
            WRONG_TYPE
        }
        15 => {
            // A client that sends seconds.
            push_i64(&mut num, field_number(buf, "timestamp") / 1000);
            set_field(buf, "timestamp", &num);
            OUT_OF_RANGE
        }
        16 => {
            // A client that sends microseconds.
            push_i64(&mut num, field_number(buf, "timestamp").saturating_mul(1000));
            set_field(buf, "timestamp", &num);
            OUT_OF_RANGE
        }
        17 => {
            let bad: &[u8] = match rng.random_range(0..3) {
                0 => b"0",
                1 => b"-1",
                _ => b"4102444800000",
            };
            set_field(buf, "timestamp", bad);
            OUT_OF_RANGE
        }
        18 => {
            push_u64(&mut num, rng.random());
            set_field(buf, "event_id", &num);
            WRONG_TYPE
        }
        19 => {
            num.push(b'"');
            for _ in 0..rng.random_range(9..=20) {
                num.extend_from_slice(&hex16(rng.random()));
            }
            num.push(b'"');
            set_field(buf, "event_id", &num);
            OUT_OF_RANGE
        }
        20 => {
            set_field(buf, "type", b"\"\"");
            OUT_OF_RANGE
        }
        21 => {
            set_field(buf, "session_id", b"\"\"");
            OUT_OF_RANGE
        }
        22 => {
            remove_field(buf, "visitor_id");
            MISSING
        }
        23 => {
            remove_field(buf, "event_id");
            MISSING
        }
        24 => {
            set_field(buf, "revenue", b"12.99");
            WRONG_TYPE
        }
        25 => {
            let bad: &[u8] = match rng.random_range(0..4) {
                0 => b"NaN",
                1 => b"Infinity",
                2 => b"1e400",
                _ => b"-1e999",
            };
            set_field(buf, "value", bad);
            OUT_OF_RANGE
        }
        26 => {
            set_field(buf, "attributes", b"{\"geo\":{\"lat\":48.1,\"lon\":11.6}}");
            WRONG_TYPE
        }
        27 => {
            set_field(buf, "tags", b"{\"sku\":12345}");
            WRONG_TYPE
        }
        28 => {
            set_field(buf, "experiments", b"{\"experiment_id\":1,\"variation_id\":2}");
            WRONG_TYPE
        }
        _ => {
            // Valid JSON, but over the 64 KiB line limit (a client that ships a DOM dump).
            let len = MAX_LINE_BYTES + rng.random_range(64..=20_000);
            let mut blob = Vec::with_capacity(len + 32);
            blob.extend_from_slice(b"{\"path\":\"/\",\"dom\":\"");
            const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let offset = rng.random_range(0..ALPHABET.len());
            blob.extend((0..len).map(|i| ALPHABET[(i * 7 + offset) % ALPHABET.len()]));
            blob.extend_from_slice(b"\"}");
            set_field(buf, "tags", &blob);
            OVERSIZED
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files.

/// The error path of every file operation here: the error, keeping its kind, as
/// `"{what} {path}: {error}"`.
trait WithPath<T> {
    fn with_path(self, what: &str, path: &Path) -> io::Result<T>;
}

impl<T> WithPath<T> for io::Result<T> {
    fn with_path(self, what: &str, path: &Path) -> io::Result<T> {
        self.map_err(|e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
    }
}

/// Writes `DIR/p0.jsonl` ... `DIR/p{P-1}.jsonl` for `args` and returns the counts.
///
/// Each file is written to `p{i}.jsonl.tmp` first (buffered) and renamed once every file is
/// complete, so an interrupted run leaves no half-written `p{i}.jsonl`. Files of other names
/// in `DIR` are left alone. A progress bar is drawn on stderr for runs of 200 000 lines or
/// more when stderr is a terminal. Errors name the path involved.
pub fn write_files(args: &GenerateArgs) -> io::Result<GenerateSummary> {
    args.validate()
        .map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    let dir = &args.out_dir;
    fs::create_dir_all(dir).with_path("cannot create directory", dir)?;
    let finals: Vec<PathBuf> = (0..args.partitions).map(|i| dir.join(format!("p{i}.jsonl"))).collect();
    let tmps: Vec<PathBuf> = (0..args.partitions)
        .map(|i| dir.join(format!("p{i}.jsonl.tmp")))
        .collect();
    let mut summary = match write_tmp_files(args, &tmps) {
        Ok(s) => s,
        Err(e) => {
            for t in &tmps {
                let _ = fs::remove_file(t);
            }
            return Err(e);
        }
    };
    for (tmp, fin) in tmps.iter().zip(&finals) {
        fs::rename(tmp, fin).with_path("cannot rename into", fin)?;
    }
    summary.files = finals;
    Ok(summary)
}

fn write_tmp_files(args: &GenerateArgs, tmps: &[PathBuf]) -> io::Result<GenerateSummary> {
    let mut writers = Vec::with_capacity(tmps.len());
    for t in tmps {
        let f = File::create(t).with_path("cannot create", t)?;
        writers.push(BufWriter::with_capacity(1 << 18, f));
    }
    let target = if args.events >= 200_000 {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(args.events), target);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "generate [{bar:40}] {human_pos}/{human_len} lines, {per_sec}, eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut generator = Generator::new(args);
    let mut buf = Vec::with_capacity(1024);
    let mut pending = 0u64;
    while let Some(p) = generator.next_line(&mut buf) {
        buf.push(b'\n');
        let (w, path) = (writers.get_mut(p as usize), tmps.get(p as usize));
        let (Some(w), Some(path)) = (w, path) else {
            return Err(io::Error::other(format!("partition {p} out of range")));
        };
        w.write_all(&buf).with_path("cannot write", path)?;
        pending += 1;
        if pending == 1 << 16 {
            bar.inc(pending);
            pending = 0;
        }
    }
    bar.inc(pending);
    for (w, path) in writers.into_iter().zip(tmps) {
        w.into_inner()
            .map_err(io::IntoInnerError::into_error)
            .with_path("cannot write", path)?;
    }
    bar.finish_and_clear();
    Ok(generator.summary())
}

/// `sessionflow generate`: writes the files and prints a short summary on stdout.
pub fn run(args: GenerateArgs) -> Result<(), String> {
    let started = Instant::now();
    let s = write_files(&args).map_err(|e| format!("generate: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let per_partition: Vec<String> = s.lines_per_partition.iter().map(u64::to_string).collect();
    let kinds: Vec<String> = s
        .invalid_by_kind
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "generated {} lines ({:.1} MB) into {} in {:.2} s: partitions [{}]",
        s.lines,
        s.bytes as f64 / 1e6,
        args.out_dir.display(),
        secs,
        per_partition.join(", ")
    );
    println!(
        "  {} events, {} sessions ({} without session_id, at most {} open at once), {} visitors, \
         event time {} .. {} ({:.0} s)",
        s.events,
        s.sessions,
        s.sessions_without_id,
        s.peak_open_sessions,
        s.visitors,
        s.first_timestamp,
        s.last_timestamp,
        (s.last_timestamp - s.first_timestamp) as f64 / 1000.0
    );
    println!(
        "  injected: {} out-of-order, {} late, {} duplicates ({} cross-partition), {} invalid ({})",
        s.out_of_order,
        s.late,
        s.duplicates,
        s.duplicates_cross_partition,
        s.invalid,
        kinds.join(", ")
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value as J;
    use std::collections::BTreeSet;
    use std::sync::OnceLock;

    const SAMPLE_LINES: u64 = 100_000;

    fn args(lines: u64, seed: u64) -> GenerateArgs {
        GenerateArgs {
            events: lines,
            seed,
            ..GenerateArgs::default()
        }
    }

    type Run = (Vec<(u32, Vec<u8>)>, GenerateSummary);

    fn all(a: &GenerateArgs) -> Run {
        let mut g = Generator::new(a);
        let lines: Vec<_> = g.by_ref().collect();
        (lines, g.summary())
    }

    /// One default-shares run shared by the statistical tests.
    fn sample() -> &'static Run {
        static SAMPLE: OnceLock<Run> = OnceLock::new();
        SAMPLE.get_or_init(|| all(&args(SAMPLE_LINES, 42)))
    }

    /// The spec's input rules: the object of a valid line, or why it is invalid.
    fn check(line: &[u8]) -> Result<serde_json::Map<String, J>, String> {
        if line.len() > MAX_LINE_BYTES {
            return Err("oversized".into());
        }
        let v: J = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        let J::Object(o) = v else {
            return Err("not an object".into());
        };
        let string = |k: &str, max: usize, required: bool| -> Result<(), String> {
            match o.get(k) {
                None | Some(J::Null) if !required => Ok(()),
                Some(J::String(s)) if !s.is_empty() && s.len() <= max => Ok(()),
                other => Err(format!("{k}: {other:?}")),
            }
        };
        string("event_id", 128, true)?;
        string("session_id", 128, false)?;
        string("visitor_id", 128, true)?;
        string("type", 64, true)?;
        if !matches!(o.get("name"), None | Some(J::Null) | Some(J::String(_))) {
            return Err("name".into());
        }
        if !o.get("project_id").is_some_and(J::is_u64) {
            return Err("project_id".into());
        }
        match o.get("timestamp") {
            Some(t) if t.is_i64() => {
                let t = t.as_i64().unwrap();
                if !(MIN_TIMESTAMP_MS..END_TIMESTAMP_MS).contains(&t) {
                    return Err("timestamp range".into());
                }
            }
            _ => return Err("timestamp".into()),
        }
        match o.get("revenue") {
            None | Some(J::Null) => {}
            Some(r) if r.is_i64() => {}
            _ => return Err("revenue".into()),
        }
        if !matches!(o.get("value"), None | Some(J::Null) | Some(J::Number(_))) {
            return Err("value".into());
        }
        match o.get("attributes") {
            None | Some(J::Null) => {}
            Some(J::Object(a)) => {
                if !a
                    .values()
                    .all(|v| matches!(v, J::String(_) | J::Number(_) | J::Bool(_) | J::Null))
                {
                    return Err("attributes value".into());
                }
            }
            _ => return Err("attributes".into()),
        }
        match o.get("tags") {
            None | Some(J::Null) => {}
            Some(J::Object(t)) if t.values().all(J::is_string) => {}
            _ => return Err("tags".into()),
        }
        match o.get("experiments") {
            None | Some(J::Null) => {}
            Some(J::Array(xs)) => {
                for x in xs {
                    let ok =
                        x.get("experiment_id").is_some_and(J::is_u64) && x.get("variation_id").is_some_and(J::is_u64);
                    if !ok {
                        return Err("experiment".into());
                    }
                }
            }
            _ => return Err("experiments".into()),
        }
        Ok(o)
    }

    type Firsts = Vec<(usize, u32, serde_json::Map<String, J>)>;

    /// First occurrences of the sample's valid lines: (line index, partition, object).
    fn valid_firsts() -> &'static Firsts {
        static FIRSTS: OnceLock<Firsts> = OnceLock::new();
        FIRSTS.get_or_init(|| {
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for (i, (p, l)) in sample().0.iter().enumerate() {
                if let Ok(o) = check(l) {
                    if seen.insert(o["event_id"].as_str().unwrap().to_owned()) {
                        out.push((i, *p, o));
                    }
                }
            }
            out
        })
    }

    fn session_key(o: &serde_json::Map<String, J>) -> String {
        match o.get("session_id").and_then(J::as_str) {
            Some(s) => s.to_owned(),
            None => format!("{}:{}", o["project_id"], o["visitor_id"].as_str().unwrap()),
        }
    }

    #[test]
    fn cli_defaults_match_default_impl() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: GenerateArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(["x", "--out-dir", "generated"]).unwrap();
        assert_eq!(format!("{:?}", cli.args), format!("{:?}", GenerateArgs::default()));
        assert!(GenerateArgs::default().validate().is_ok());
        let bad = <Cli as clap::Parser>::try_parse_from(["x", "--out-dir", "d", "--late", "1.5"]);
        assert!(bad.is_err());
        let bad = <Cli as clap::Parser>::try_parse_from(["x", "--out-dir", "d", "--partitions", "0"]);
        assert!(bad.is_err());
    }

    #[test]
    fn validate_rejects_out_of_range_args() {
        let bad = [
            GenerateArgs {
                invalid: -0.1,
                ..GenerateArgs::default()
            },
            GenerateArgs {
                duplicates: 0.7,
                invalid: 0.6,
                ..GenerateArgs::default()
            },
            GenerateArgs {
                partitions: 0,
                ..GenerateArgs::default()
            },
            GenerateArgs {
                rate: 0.0,
                ..GenerateArgs::default()
            },
            GenerateArgs {
                start_ms: 0,
                ..GenerateArgs::default()
            },
            GenerateArgs {
                rate: 0.000_1,
                ..GenerateArgs::default()
            },
        ];
        for a in bad {
            assert!(a.validate().is_err(), "{a:?}");
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = args(20_000, 7);
        let (x, sx) = all(&a);
        let (y, sy) = all(&a);
        assert_eq!(x.len(), 20_000);
        assert!(x == y, "same flags must give the same lines");
        assert_eq!(sx, sy);
        let (z, _) = all(&args(20_000, 8));
        assert!(x != z, "another seed must give other lines");
        // The iterator and next_line agree.
        let mut g = Generator::new(&a);
        let mut buf = Vec::new();
        for (p, l) in &x {
            assert_eq!(g.next_line(&mut buf), Some(*p));
            assert_eq!(&buf, l);
        }
        assert_eq!(g.next_line(&mut buf), None);
    }

    #[test]
    fn lines_are_valid_or_deliberately_invalid() {
        let (lines, s) = sample();
        assert_eq!(lines.len() as u64, SAMPLE_LINES);
        assert_eq!(s.lines, SAMPLE_LINES);
        assert_eq!(s.lines_per_partition.iter().sum::<u64>(), SAMPLE_LINES);
        assert_eq!(s.bytes, lines.iter().map(|(_, l)| l.len() as u64 + 1).sum::<u64>());
        let mut first: HashMap<String, usize> = HashMap::new();
        let (mut invalid, mut dups) = (0u64, 0u64);
        for (i, (p, l)) in lines.iter().enumerate() {
            assert!(*p < 4);
            assert!(!l.is_empty() && !l.contains(&b'\n') && l.last() != Some(&b'\r'));
            match check(l) {
                Err(_) => invalid += 1,
                Ok(o) => {
                    let id = o["event_id"].as_str().unwrap();
                    if let Some(&j) = first.get(id) {
                        assert_eq!(&lines[j].1, l, "a duplicate is an exact copy");
                        dups += 1;
                    } else {
                        first.insert(id.to_owned(), i);
                    }
                }
            }
        }
        assert_eq!(invalid, s.invalid);
        assert_eq!(invalid, 100);
        assert_eq!(s.invalid_by_kind.iter().map(|(_, n)| n).sum::<u64>(), invalid);
        assert!(s.invalid_by_kind.iter().filter(|(_, n)| *n > 0).count() >= 4, "{s:?}");
        assert_eq!(dups, s.duplicates);
        assert_eq!(dups, 1000);
        assert_eq!(first.len() as u64, s.events);
        assert_eq!(s.events + s.duplicates + s.invalid, s.lines);
        assert!(s.first_timestamp >= GenerateArgs::default().start_ms);
    }

    #[test]
    fn injected_shares_are_roughly_respected() {
        let s = &sample().1;
        let n = s.events as f64;
        let share = |x: u64| x as f64 / n;
        assert!((0.04..0.06).contains(&share(s.out_of_order)), "{s:?}");
        assert!((0.001..0.0035).contains(&share(s.late)), "{s:?}");
        assert!((0.02..0.10).contains(&share(s.events_without_session_id)), "{s:?}");
        assert!(
            s.duplicates_cross_partition > 30 && s.duplicates_cross_partition < 200,
            "{s:?}"
        );
        // Lines behind their partition's watermark (max timestamp - 5 s) are the late ones.
        let mut max = [i64::MIN; 4];
        let mut behind = 0u64;
        let mut out_of_order = 0u64;
        for (_, p, o) in valid_firsts() {
            let p = *p;
            let t = o["timestamp"].as_i64().unwrap();
            let m = &mut max[p as usize];
            if t < m.saturating_sub(5_000) {
                behind += 1;
            } else if t < *m {
                out_of_order += 1;
            }
            *m = (*m).max(t);
        }
        assert!(behind <= s.late && behind * 10 >= s.late * 8, "{behind} of {}", s.late);
        assert!(out_of_order as f64 > 0.5 * s.out_of_order as f64, "{out_of_order}");
    }

    #[test]
    fn each_session_lives_in_one_partition() {
        let s = &sample().1;
        let mut part: HashMap<String, u32> = HashMap::new();
        let mut visitor_of: HashMap<String, String> = HashMap::new();
        let mut project_of: HashMap<String, u64> = HashMap::new();
        let mut nulls = 0;
        for (_, p, o) in valid_firsts() {
            let p = *p;
            let key = session_key(o);
            assert_eq!(kafka_partition(key.as_bytes(), 4), p);
            assert_eq!(*part.entry(key).or_insert(p), p);
            let visitor = o["visitor_id"].as_str().unwrap().to_owned();
            let project = o["project_id"].as_u64().unwrap();
            assert_eq!(*project_of.entry(visitor.clone()).or_insert(project), project);
            if let Some(sid) = o.get("session_id").and_then(J::as_str) {
                assert_eq!(*visitor_of.entry(sid.to_owned()).or_insert(visitor.clone()), visitor);
            }
            if o.get("session_id") == Some(&J::Null) {
                nulls += 1;
            }
        }
        assert!(nulls > 0, "verbose SDKs write session_id null");
        assert!(s.duplicates_cross_partition > 0);
    }

    #[test]
    fn sessions_look_like_sessions() {
        let s = &sample().1;
        let mut events: HashMap<String, Vec<(i64, String)>> = HashMap::new();
        let mut sessions_of: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (_, _, o) in valid_firsts() {
            if let Some(sid) = o.get("session_id").and_then(J::as_str) {
                let t = o["timestamp"].as_i64().unwrap();
                let kind = o["type"].as_str().unwrap().to_owned();
                events.entry(sid.to_owned()).or_default().push((t, kind));
                sessions_of
                    .entry(o["visitor_id"].as_str().unwrap().to_owned())
                    .or_default()
                    .insert(sid.to_owned());
            }
        }
        let mean = events.values().map(Vec::len).sum::<usize>() as f64 / events.len() as f64;
        assert!((8.0..12.0).contains(&mean), "mean session length {mean}");
        let overall = s.events as f64 / s.sessions as f64;
        assert!((8.0..12.0).contains(&overall), "{overall}");
        assert!(
            events.values().map(Vec::len).max().unwrap() >= 100,
            "some long sessions"
        );
        let bounces = events.values().filter(|e| e.len() == 1).count() as f64;
        assert!(bounces / events.len() as f64 > 0.2);
        let mut landing_pageviews = 0;
        for e in events.values_mut() {
            e.sort();
            let t0 = e[0].0;
            if e.iter().take_while(|(t, _)| *t == t0).any(|(_, k)| k == "pageview") {
                landing_pageviews += 1;
            }
        }
        assert!(landing_pageviews as f64 > 0.9 * events.len() as f64);
        assert!(sessions_of.values().any(|s| s.len() >= 3), "visitors return");
        assert!(s.visitors > 1000 && s.visitors < s.sessions);
    }

    #[test]
    fn attributes_experiments_and_conversions_are_consistent() {
        let stable = [
            "browser",
            "os",
            "device",
            "country",
            "language",
            "ip",
            "screen_width",
            "referrer",
        ];
        let mut attrs: HashMap<String, serde_json::Map<String, J>> = HashMap::new();
        let mut page_types: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut logged_in: HashMap<String, BTreeSet<bool>> = HashMap::new();
        let mut variation: HashMap<(String, u64), u64> = HashMap::new();
        let mut names: HashMap<String, u64> = HashMap::new();
        for (_, _, o) in valid_firsts() {
            let key = session_key(o);
            let visitor = o["visitor_id"].as_str().unwrap().to_owned();
            if let Some(J::Object(a)) = o.get("attributes") {
                let first = attrs.entry(key.clone()).or_insert_with(|| a.clone());
                if o.get("session_id").is_some_and(J::is_string) {
                    for k in stable {
                        assert_eq!(first.get(k), a.get(k), "{k} is stable within a session");
                    }
                }
                page_types
                    .entry(key.clone())
                    .or_default()
                    .insert(a["page_type"].to_string());
                logged_in
                    .entry(key.clone())
                    .or_default()
                    .insert(a["logged_in"].as_bool().unwrap());
            }
            if let Some(J::Array(xs)) = o.get("experiments") {
                assert_eq!(o["type"], "decision");
                for x in xs {
                    let e = x["experiment_id"].as_u64().unwrap();
                    let v = x["variation_id"].as_u64().unwrap();
                    assert_eq!(*variation.entry((visitor.clone(), e)).or_insert(v), v);
                }
            }
            if o["type"] == "conversion" {
                let name = o["name"].as_str().unwrap();
                *names.entry(name.to_owned()).or_default() += 1;
                match name {
                    "purchase" => assert!(o["revenue"].as_i64().unwrap() > 0),
                    "refund" => assert!(o["revenue"].as_i64().unwrap() < 0),
                    "add_to_cart" => assert!(o["tags"]["sku"].is_string()),
                    "signup" => {}
                    other => panic!("unexpected conversion {other}"),
                }
            }
        }
        assert!(page_types.values().filter(|t| t.len() > 1).count() > 100);
        assert!(logged_in.values().filter(|t| t.len() > 1).count() > 10);
        assert!(variation.len() > 1000);
        for n in ["purchase", "add_to_cart", "signup"] {
            assert!(names.get(n).copied().unwrap_or(0) > 100, "{names:?}");
        }
    }

    #[test]
    fn edge_sizes_and_shares() {
        let (lines, s) = all(&args(0, 1));
        assert!(lines.is_empty() && s.lines == 0);
        let (lines, s) = all(&args(1, 1));
        assert_eq!(lines.len(), 1);
        assert_eq!(s.events, 1);
        let a = GenerateArgs {
            events: 500,
            invalid: 1.0,
            duplicates: 0.0,
            ..GenerateArgs::default()
        };
        let (lines, s) = all(&a);
        assert_eq!(s.invalid, 500);
        assert!(lines.iter().all(|(_, l)| check(l).is_err()));
        let a = GenerateArgs {
            events: 500,
            duplicates: 1.0,
            invalid: 0.0,
            ..GenerateArgs::default()
        };
        let (_, s) = all(&a);
        assert_eq!((s.events, s.duplicates), (1, 499));
        let a = GenerateArgs {
            events: 3000,
            partitions: 1,
            ..GenerateArgs::default()
        };
        let (lines, s) = all(&a);
        assert!(lines.iter().all(|(p, _)| *p == 0));
        assert_eq!(s.duplicates_cross_partition, 0);
        let a = GenerateArgs {
            events: 3000,
            no_session_id: 1.0,
            ..GenerateArgs::default()
        };
        let (_, s) = all(&a);
        assert_eq!(s.events_without_session_id, s.events);
    }

    #[test]
    fn write_files_writes_what_the_iterator_yields() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested").join("out");
        let a = GenerateArgs {
            events: 5000,
            partitions: 3,
            out_dir: out.clone(),
            ..GenerateArgs::default()
        };
        let s = write_files(&a).unwrap();
        let (lines, expected) = all(&a);
        assert_eq!(
            GenerateSummary {
                files: Vec::new(),
                ..s.clone()
            },
            expected
        );
        assert_eq!(s.files.len(), 3);
        for (p, path) in s.files.iter().enumerate() {
            assert_eq!(path, &out.join(format!("p{p}.jsonl")));
            let mut want = Vec::new();
            for (q, l) in &lines {
                if *q as usize == p {
                    want.extend_from_slice(l);
                    want.push(b'\n');
                }
            }
            assert_eq!(fs::read(path).unwrap(), want);
        }
        let names: Vec<_> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "no .tmp left: {names:?}");
        // A second run gives the same bytes.
        let before = fs::read(&s.files[1]).unwrap();
        write_files(&a).unwrap();
        assert_eq!(fs::read(&s.files[1]).unwrap(), before);
    }

    #[test]
    fn write_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let a = GenerateArgs {
            events: 10,
            out_dir: file.clone(),
            ..GenerateArgs::default()
        };
        let e = write_files(&a).unwrap_err();
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        assert!(run(a).unwrap_err().contains("not-a-dir"));
        let a = GenerateArgs {
            late: 2.0,
            out_dir: dir.path().to_owned(),
            ..GenerateArgs::default()
        };
        assert_eq!(write_files(&a).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
