//! Throughput of event parsing: `parse_event` (its single-pass fast path for lines in the
//! common shape, serde_json for the rest) against the reference validation code alone driven
//! by `serde_json`, `sonic-rs` and `simd-json`.
//!
//! Run with `cargo bench -p sessionflow-operators --bench parse -- --measurement-time 3
//! --warm-up-time 1`. Before measuring, the three parsers are checked to agree on the whole
//! corpus and on a set of invalid lines (the process panics otherwise).

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::Number;
use sessionflow_operators::event::{
    parse_event, parse_event_from, parse_event_reference, AttrValue, CompactString, Event, Experiment, Invalid,
    MAX_LINE_BYTES,
};

/// Number of lines in the corpus.
const LINES: usize = 10_000;

/// `parse_event_from` driven by sonic-rs.
fn parse_sonic(line: &[u8]) -> Result<Event, Invalid> {
    if line.len() > MAX_LINE_BYTES {
        return Err(Invalid::TooLong);
    }
    let mut de = sonic_rs::Deserializer::from_slice(line);
    let event = parse_event_from(&mut de)?;
    de.end().map_err(|e| Invalid::Json(e.to_string()))?;
    Ok(event)
}

/// `parse_event_from` driven by simd-json; it parses in place, so it works on a copy of the
/// line in `scratch`, and reuses its internal `buffers`.
fn parse_simd(line: &[u8], scratch: &mut Vec<u8>, buffers: &mut simd_json::Buffers) -> Result<Event, Invalid> {
    if line.len() > MAX_LINE_BYTES {
        return Err(Invalid::TooLong);
    }
    scratch.clear();
    scratch.extend_from_slice(line);
    let mut de =
        simd_json::Deserializer::from_slice_with_buffers(scratch, buffers).map_err(|e| Invalid::Json(e.to_string()))?;
    parse_event_from(&mut de)
}

/// A small deterministic generator (xorshift64*), so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(n);
        s
    }
    fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// ~10k click-stream lines of 300..400 bytes: uuids and 20-char ids, common attributes, and
/// sometimes a name, revenue, value, tags, experiments or an unknown field.
fn corpus() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5e55_10f1_0d00_beef);
    let types = [
        "pageview",
        "pageview",
        "pageview",
        "click",
        "click",
        "conversion",
        "decision",
    ];
    let names = ["add_to_cart", "checkout", "signup", "search", "play_video"];
    let browsers = ["chrome", "firefox", "safari", "edge", "samsung"];
    let oses = ["windows", "macos", "ios", "android", "linux"];
    let countries = ["US", "CA", "GB", "DE", "FR", "JP", "BR", "IN"];
    let devices = ["desktop", "mobile", "tablet"];
    let langs = ["en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR"];
    let pages = ["/", "/pricing", "/product/123", "/cart", "/blog/how-to-sessionize"];
    let visitors: Vec<String> = (0..2_000).map(|_| format!("v_{}", rng.hex(18))).collect();
    let mut ts = 1_700_000_000_000i64;
    let mut lines = Vec::with_capacity(LINES);
    for _ in 0..LINES {
        ts += rng.below(500) as i64;
        let kind: CompactString = rng.pick(&types).into();
        let mut attributes: Vec<(CompactString, AttrValue)> = vec![
            ("browser".into(), AttrValue::Str(rng.pick(&browsers).into())),
            ("os".into(), AttrValue::Str(rng.pick(&oses).into())),
            (
                "ip".into(),
                AttrValue::Str(
                    format!(
                        "{}.{}.{}.{}",
                        rng.below(223) + 1,
                        rng.below(256),
                        rng.below(256),
                        rng.below(256)
                    )
                    .into(),
                ),
            ),
            ("country".into(), AttrValue::Str(rng.pick(&countries).into())),
            ("device".into(), AttrValue::Str(rng.pick(&devices).into())),
        ];
        if rng.chance(60) {
            attributes.push(("lang".into(), AttrValue::Str(rng.pick(&langs).into())));
        }
        if rng.chance(40) {
            let w = [1280u64, 1366, 1440, 1920, 390, 412][rng.below(6) as usize];
            attributes.push(("screen_w".into(), AttrValue::Num(w.into())));
        }
        if rng.chance(30) {
            attributes.push(("returning".into(), AttrValue::Bool(rng.chance(50))));
        }
        attributes.sort_by(|a, b| a.0.cmp(&b.0));
        let converts = kind == "conversion";
        let tags = rng.chance(50).then(|| {
            let mut t: Vec<(CompactString, CompactString)> = vec![("page".into(), rng.pick(&pages).into())];
            if converts || rng.chance(30) {
                t.push(("sku".into(), format!("SKU-{}", rng.below(100_000)).into()));
            }
            t.sort();
            t
        });
        let experiments = rng.chance(40).then(|| {
            (0..1 + rng.below(3))
                .map(|i| Experiment {
                    experiment_id: 1_000 + i * 7 + rng.below(5),
                    variation_id: rng.below(4),
                })
                .collect()
        });
        let event = Event {
            event_id: rng.uuid().into(),
            session_id: rng.chance(90).then(|| format!("s_{}", rng.hex(20)).into()),
            visitor_id: visitors[rng.below(visitors.len() as u64) as usize].as_str().into(),
            project_id: 1 + rng.below(50),
            timestamp: ts,
            name: (converts || rng.chance(20)).then(|| rng.pick(&names).into()),
            revenue: converts.then(|| rng.below(50_000) as i64),
            value: rng
                .chance(15)
                .then(|| Number::from_f64(rng.below(10_000) as f64 / 100.0).unwrap()),
            kind,
            attributes: Some(attributes),
            tags,
            experiments,
        };
        let mut line = serde_json::to_vec(&event.input_json()).unwrap();
        if rng.chance(10) {
            // An unknown field, ignored by the parser but still validated.
            line.pop();
            line.extend_from_slice(br#","sdk":{"name":"web","version":"3.2.1"}}"#);
        }
        lines.push(line);
    }
    lines
}

/// Lines that break one rule each; every parser must reject them.
fn invalid_lines() -> Vec<Vec<u8>> {
    let base = r#""event_id":"e1","visitor_id":"v1","project_id":7,"timestamp":1700000000000,"type":"click""#;
    let with = |extra: &str| format!("{{{base}{extra}}}").into_bytes();
    let mut lines = vec![
        b"".to_vec(),
        b"   ".to_vec(),
        b"{}".to_vec(),
        b"[1,2]".to_vec(),
        b"null".to_vec(),
        with(r#","x":1e400"#),
        with(r#","value":1e400"#),
        with(r#","value":NaN"#),
        with(r#","project_id":2"#),
        with(r#","attributes":{"a":1,"a":2}"#),
        with(r#","tags":{"a":null}"#),
        with(r#","attributes":{"a":[1]}"#),
        with(r#","experiments":[{"experiment_id":1}]"#),
        with(r#","experiments":[{"experiment_id":1.0,"variation_id":2}]"#),
        with(r#","revenue":9223372036854775808"#),
        with(r#","x":"\ud800""#),
        with(r#","x":{"y":1,"y":2}"#),
        with("} trailing"),
        with(&format!(r#","pad":"{}""#, "p".repeat(MAX_LINE_BYTES))),
        format!("{{{}}}", base.replace("1700000000000", "1.7e12")).into_bytes(),
        format!("{{{}}}", base.replace("\"e1\"", "\"\"")).into_bytes(),
        format!("{{{}}}", base.replace("7,", "-7,")).into_bytes(),
        format!("{{{}}}", base.replace("1700000000000", "946684799999")).into_bytes(),
    ];
    let mut bad_utf8 = with(r#","x":"é""#);
    let at = bad_utf8.len() - 3;
    bad_utf8[at] = 0xff;
    lines.push(bad_utf8);
    lines
}

/// The result with parser-specific syntax messages blanked, for comparison.
fn normalized(r: Result<Event, Invalid>) -> Result<Event, Invalid> {
    r.map_err(|e| match e {
        Invalid::Json(_) | Invalid::NotUtf8 { .. } => Invalid::Json(String::new()),
        other => other,
    })
}

/// Panics unless the parsers agree on every line.
fn check_agreement(corpus: &[Vec<u8>]) {
    let mut scratch = Vec::new();
    let mut buffers = simd_json::Buffers::default();
    for line in corpus {
        let ours = parse_event(line);
        assert!(ours.is_ok(), "corpus line rejected: {ours:?}");
    }
    let invalid = invalid_lines();
    for line in corpus.iter().chain(&invalid) {
        let ours = normalized(parse_event(line));
        assert_eq!(
            parse_event(line),
            parse_event_reference(line),
            "the fast path changed a result"
        );
        let sonic = normalized(parse_sonic(line));
        let simd = normalized(parse_simd(line, &mut scratch, &mut buffers));
        let shown = String::from_utf8_lossy(&line[..line.len().min(200)]);
        assert_eq!(ours, sonic, "serde_json and sonic-rs disagree on {shown}");
        assert_eq!(ours, simd, "serde_json and simd-json disagree on {shown}");
    }
    for line in &invalid {
        let reason = parse_event(line).unwrap_err().to_string();
        assert!(reason.starts_with("invalid"), "{reason}");
    }
}

fn bench_parse(c: &mut Criterion) {
    let corpus = corpus();
    check_agreement(&corpus);
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    eprintln!(
        "corpus: {} lines, {} bytes, {:.0} bytes/line on average",
        corpus.len(),
        bytes,
        bytes as f64 / corpus.len() as f64
    );

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::ElementsAndBytes {
        elements: corpus.len() as u64,
        bytes: bytes as u64,
    });
    group.bench_function("parse_event", |b| {
        b.iter(|| {
            for line in &corpus {
                black_box(parse_event(black_box(line)).unwrap());
            }
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            for line in &corpus {
                black_box(parse_event_reference(black_box(line)).unwrap());
            }
        })
    });
    group.bench_function("sonic-rs", |b| {
        b.iter(|| {
            for line in &corpus {
                black_box(parse_sonic(black_box(line)).unwrap());
            }
        })
    });
    group.bench_function("simd-json", |b| {
        let mut scratch = Vec::with_capacity(MAX_LINE_BYTES);
        let mut buffers = simd_json::Buffers::default();
        b.iter(|| {
            for line in &corpus {
                black_box(parse_simd(black_box(line), &mut scratch, &mut buffers).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
