//! Compares `sessionflow replay` with an independent reference implementation of the session
//! contract (`tests/reference/mod.rs`) on seeded random inputs, for 1 to 4 workers, and checks a
//! few hand-written scenarios against exact expected output.
//!
//! Environment knobs: `SESSIONFLOW_REF_SEEDS` (number of seeds, default 100 per test) and
//! `SESSIONFLOW_REF_SEED` (run only that seed).
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod reference;

use std::path::{Path, PathBuf};
use std::process::Command;

use reference::{Config, DeadLetter, Output};
use serde_json::Value;

/// What one engine run wrote.
struct EngineRun {
    output: Vec<u8>,
    dead: Vec<u8>,
    stats: Vec<u8>,
    experiments: Vec<u8>,
}

/// Writes the partitions into `dir`, returns their paths.
fn write_inputs(dir: &Path, partitions: &[Vec<u8>]) -> Vec<PathBuf> {
    partitions
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let p = dir.join(format!("p{i}.jsonl"));
            std::fs::write(&p, bytes).unwrap();
            p
        })
        .collect()
}

/// Runs `sessionflow replay`; `flags` are the semantic flags (may be empty for the defaults).
fn run_engine(dir: &Path, inputs: &[PathBuf], flags: &[String], workers: usize) -> Result<EngineRun, String> {
    let out = dir.join(format!("out-{workers}.jsonl"));
    let dead = dir.join(format!("dead-{workers}.jsonl"));
    let stats = dir.join(format!("stats-{workers}.json"));
    let experiments = dir.join(format!("experiments-{workers}.jsonl"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessionflow"));
    cmd.arg("replay");
    for i in inputs {
        cmd.arg("--input").arg(i);
    }
    cmd.arg("--output")
        .arg(&out)
        .arg("--dead-letter")
        .arg(&dead)
        .arg("--stats")
        .arg(&stats)
        .arg("--experiments")
        .arg(&experiments);
    cmd.args(flags).arg("--workers").arg(workers.to_string());
    let result = with_retries(|| cmd.output()).map_err(|e| format!("cannot run sessionflow: {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "sessionflow replay failed ({}): {}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    Ok(EngineRun {
        output: read(&out)?,
        dead: read(&dead)?,
        stats: read(&stats)?,
        experiments: read(&experiments)?,
    })
}

/// Other builds share `target/`: the binary may be missing for a moment while one replaces it.
/// Retries starting it for up to a minute.
fn with_retries<T>(mut start: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match start() {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ExecutableFileBusy
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// Splits an output file into lines, requiring every line to end with `\n`.
fn lines(bytes: &[u8], what: &str) -> Result<Vec<String>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{what}: not UTF-8"))?;
    let Some(body) = text.strip_suffix('\n') else {
        return Err(format!("{what}: last line lacks its newline"));
    };
    Ok(body.split('\n').map(str::to_string).collect())
}

/// Canonical order used to compare snapshot lists: ties inside `(window, session_id)` are
/// decided by the canonical text, so that the comparison does not depend on key order.
fn canonical_sort(values: &mut [Value]) {
    values.sort_by_key(|v| {
        (
            v["window"].as_i64(),
            v["session_id"].as_str().map(|s| s.as_bytes().to_vec()),
            v.to_string(),
        )
    });
}

/// Compares one engine run with the reference; returns a description of the first difference.
fn compare(reference: &Output, run: &EngineRun) -> Result<(), String> {
    // (a) snapshots: engine order is (window, session_id bytes, line bytes); contents equal.
    let out_lines = lines(&run.output, "output")?;
    let mut engine: Vec<Value> = Vec::new();
    for (i, l) in out_lines.iter().enumerate() {
        let v: Value = serde_json::from_str(l).map_err(|e| format!("output line {i} is not JSON: {e}: {l}"))?;
        engine.push(v);
    }
    for i in 1..engine.len() {
        let key = |j: usize| {
            let v = &engine[j];
            (
                v["window"].as_i64(),
                v["session_id"].as_str().unwrap_or("").as_bytes().to_vec(),
                out_lines[j].as_bytes(),
            )
        };
        if key(i - 1) >= key(i) {
            return Err(format!(
                "output not sorted by (window, session_id, line) at line {i}:\n  {}\n  {}",
                out_lines[i - 1],
                out_lines[i]
            ));
        }
    }
    let mut engine_sorted = engine.clone();
    canonical_sort(&mut engine_sorted);
    let mut ref_sorted = reference.snapshots.clone();
    canonical_sort(&mut ref_sorted);
    for i in 0..engine_sorted.len().max(ref_sorted.len()) {
        let e = engine_sorted.get(i);
        let r = ref_sorted.get(i);
        if e != r {
            let show = |v: Option<&Value>| v.map_or("<none>".to_string(), Value::to_string);
            let at = match (e, r) {
                (Some(e), Some(r)) => first_difference(e, r, String::new()),
                _ => String::new(),
            };
            return Err(format!(
                "snapshot {i} differs ({} engine lines, {} reference){at}:\n  engine:    {}\n  reference: {}",
                engine_sorted.len(),
                ref_sorted.len(),
                show(e),
                show(r)
            ));
        }
    }

    // (c) dead letters: sorted by (partition, offset); equal up to the detail of `invalid` reasons.
    let dead_lines = lines(&run.dead, "dead letters")?;
    let mut dead: Vec<DeadLetter> = Vec::new();
    for l in &dead_lines {
        let v: Value = serde_json::from_str(l).map_err(|e| format!("dead letter is not JSON: {e}: {l}"))?;
        let field = |k: &str| v.get(k).cloned().ok_or(format!("dead letter lacks {k}: {l}"));
        dead.push(DeadLetter {
            partition: field("partition")?.as_u64().ok_or("partition")? as usize,
            offset: field("offset")?.as_u64().ok_or("offset")? as usize,
            reason: field("reason")?.as_str().ok_or("reason")?.to_string(),
            raw: field("raw")?.as_str().ok_or("raw")?.to_string(),
        });
    }
    for i in 1..dead.len() {
        if (dead[i - 1].partition, dead[i - 1].offset) >= (dead[i].partition, dead[i].offset) {
            return Err(format!("dead letters not sorted at line {i}: {}", dead_lines[i]));
        }
    }
    for i in 0..dead.len().max(reference.dead_letters.len()) {
        let e = dead.get(i);
        let r = reference.dead_letters.get(i);
        let same = match (e, r) {
            (Some(e), Some(r)) => {
                let reason_ok = if r.reason.starts_with("invalid") {
                    e.reason.starts_with("invalid")
                } else {
                    e.reason == r.reason
                };
                reason_ok && (e.partition, e.offset, &e.raw) == (r.partition, r.offset, &r.raw)
            }
            _ => false,
        };
        if !same {
            return Err(format!(
                "dead letter {i} differs ({} engine, {} reference):\n  engine:    {:?}\n  reference: {:?}",
                dead.len(),
                reference.dead_letters.len(),
                e,
                r
            ));
        }
    }

    // (d) stats.
    let stats: Value = serde_json::from_slice(&run.stats).map_err(|e| format!("stats not JSON: {e}"))?;
    let expected = reference.counters.to_json();
    for (k, want) in expected.as_object().unwrap() {
        if stats.get(k) != Some(want) {
            return Err(format!(
                "stats.{k}: engine {:?}, reference {want}\n  engine stats: {stats}",
                stats.get(k)
            ));
        }
    }
    let n = |k: &str| stats[k].as_u64().unwrap_or(u64::MAX);
    if n("events_read") != n("accepted") + n("duplicates") + n("late") + n("invalid") {
        return Err(format!("stats do not balance: {stats}"));
    }
    if n("snapshots") != engine.len() as u64 {
        return Err(format!(
            "stats.snapshots {} but {} output lines",
            n("snapshots"),
            engine.len()
        ));
    }

    // (f) experiment totals: those the reference's snapshots imply, window by window.
    check_experiments(&reference.snapshots, &run.experiments)?;

    // (e) invariants.
    check_invariants(&engine).map_err(|e| format!("engine output: {e}"))?;
    check_invariants(&reference.snapshots).map_err(|e| format!("REFERENCE output: {e}"))?;
    Ok(())
}

/// Where two JSON values first differ, as ` at path: engine X, reference Y`.
fn first_difference(e: &Value, r: &Value, path: String) -> String {
    match (e, r) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) if x == y => {}
                    (Some(x), Some(y)) => return first_difference(x, y, format!("{path}.{k}")),
                    (x, y) => return format!(" at {path}.{k}: engine {x:?}, reference {y:?}"),
                }
            }
            String::new()
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    return first_difference(x, y, format!("{path}[{i}]"));
                }
            }
            String::new()
        }
        _ => format!(" at {path}: engine {e}, reference {r}"),
    }
}

/// Every session ends with a closed snapshot; no session has two snapshots in one window.
///
/// A session is identified by `session_id` (plus `project_id` for gap sessions, whose ids
/// contain `@`; the generator never writes an `@` in a `session_id`).
fn check_invariants(snapshots: &[Value]) -> Result<(), String> {
    use std::collections::BTreeMap;
    // identity -> (last window, last closed)
    let mut last: BTreeMap<(String, String), (i64, bool)> = BTreeMap::new();
    let mut sorted = snapshots.to_vec();
    sorted.sort_by_key(reference::snapshot_sort_key);
    for s in &sorted {
        let id = s["session_id"].as_str().unwrap_or("").to_string();
        let project = if id.contains('@') {
            s["project_id"].to_string()
        } else {
            String::new()
        };
        let window = s["window"].as_i64().ok_or("no window")?;
        let closed = s["closed"].as_bool().ok_or("no closed")?;
        if let Some(&(w, was_closed)) = last.get(&(id.clone(), project.clone())) {
            if w == window && !was_closed {
                return Err(format!("two snapshots of {id} in window {window}"));
            }
        }
        let merged = s.get("merged_into").is_some();
        if merged && !closed {
            return Err(format!("merged snapshot not closed: {s}"));
        }
        last.insert((id, project), (window, closed));
    }
    for ((id, _), (w, closed)) in &last {
        if !closed {
            return Err(format!("session {id} never closed (last snapshot at window {w})"));
        }
    }
    Ok(())
}

/// `(project_id, experiment_id, variation_id)`.
type Variation = (u64, u64, u64);
/// `(sessions, sessions_with_revenue, events, revenue)`.
type Totals = (i64, i64, i64, i128);
/// A session's `(project_id, totals, pairs)` by `(session_id, project of a gap session, life)`.
type Sessions = std::collections::BTreeMap<(String, String, u64), (u64, Totals, Vec<(u64, u64)>)>;

/// The experiment totals that `snapshots` imply, computed directly (no differential): after
/// each window, every session of the run counts once per pair it has, with its latest
/// snapshot (closed sessions keep their final one, merged-away ones leave); the result is, per
/// window, each variation whose totals changed, with its new totals (zeros once it has none).
fn expected_experiments(snapshots: &[Value]) -> std::collections::BTreeMap<u64, Vec<(Variation, Totals)>> {
    use std::collections::BTreeMap;
    let mut sorted = snapshots.to_vec();
    sorted.sort_by_key(reference::snapshot_sort_key);
    // Identity as in `check_invariants`, plus the life: an id seen again after its closed
    // snapshot is a new session.
    let mut lives: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut sessions: Sessions = BTreeMap::new();
    let totals_of = |sessions: &Sessions| {
        let mut all: BTreeMap<Variation, Totals> = BTreeMap::new();
        for (project, t, pairs) in sessions.values() {
            for &(e, v) in pairs {
                let a = all.entry((*project, e, v)).or_default();
                *a = (a.0 + t.0, a.1 + t.1, a.2 + t.2, a.3 + t.3);
            }
        }
        all
    };
    let mut before: BTreeMap<Variation, Totals> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < sorted.len() {
        let window = sorted[i]["window"].as_u64().unwrap();
        while i < sorted.len() && sorted[i]["window"].as_u64() == Some(window) {
            let s = &sorted[i];
            i += 1;
            let id = s["session_id"].as_str().unwrap().to_string();
            let project = if id.contains('@') {
                s["project_id"].to_string()
            } else {
                String::new()
            };
            let life = *lives.get(&(id.clone(), project.clone())).unwrap_or(&0);
            let key = (id.clone(), project.clone(), life);
            if s["closed"] == Value::Bool(true) {
                lives.insert((id, project), life + 1);
            }
            if s.get("merged_into").is_some() {
                sessions.remove(&key);
                continue;
            }
            let pairs: Vec<(u64, u64)> = s["experiments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap()))
                .collect();
            let revenue: i128 = s["revenue"].to_string().parse().unwrap();
            let events = s["event_count"].as_i64().unwrap();
            let totals = (1, i64::from(revenue > 0), events, revenue);
            sessions.insert(key, (s["project_id"].as_u64().unwrap(), totals, pairs));
        }
        let after = totals_of(&sessions);
        let changed: Vec<(Variation, Totals)> = after
            .iter()
            .filter(|(v, t)| before.get(*v) != Some(*t))
            .map(|(v, t)| (*v, *t))
            .chain(
                before
                    .keys()
                    .filter(|v| !after.contains_key(*v))
                    .map(|v| (*v, (0, 0, 0, 0))),
            )
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        if !changed.is_empty() {
            out.insert(window, changed);
        }
        before = after;
    }
    out
}

/// Checks `replay --experiments` output: sorted by `(window, project, experiment,
/// variation)`, and equal to [`expected_experiments`] of the reference's snapshots.
fn check_experiments(snapshots: &[Value], file: &[u8]) -> Result<(), String> {
    use std::collections::BTreeMap;
    let mut engine: BTreeMap<u64, Vec<(Variation, Totals)>> = BTreeMap::new();
    let mut last: Option<(u64, Variation)> = None;
    for l in lines(file, "experiments")? {
        let v: Value = serde_json::from_str(&l).map_err(|e| format!("experiments line is not JSON: {e}: {l}"))?;
        let n = |k: &str| v[k].as_u64().ok_or(format!("experiments line lacks {k}: {l}"));
        let i = |k: &str| v[k].as_i64().ok_or(format!("experiments line lacks {k}: {l}"));
        let window = n("window")?;
        let variation = (n("project_id")?, n("experiment_id")?, n("variation_id")?);
        let revenue: i128 = v["revenue"].to_string().parse().map_err(|_| format!("revenue: {l}"))?;
        let totals = (i("sessions")?, i("sessions_with_revenue")?, i("events")?, revenue);
        if last.is_some_and(|p| p >= (window, variation)) {
            return Err(format!("experiments not sorted by (window, variation) at {l}"));
        }
        last = Some((window, variation));
        engine.entry(window).or_default().push((variation, totals));
    }
    let expected = expected_experiments(snapshots);
    if engine != expected {
        let windows: std::collections::BTreeSet<&u64> = engine.keys().chain(expected.keys()).collect();
        for w in windows {
            if engine.get(w) != expected.get(w) {
                return Err(format!(
                    "experiment totals differ at window {w}:\n  engine:   {:?}\n  expected: {:?}",
                    engine.get(w),
                    expected.get(w)
                ));
            }
        }
    }
    Ok(())
}

/// Runs one seed on 1..=4 workers; returns a failure description.
fn check_seed(seed: u64, conflicting_gap_copies: bool) -> Result<(), String> {
    let case = reference::gen::generate_with(seed, conflicting_gap_copies);
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), &case.partitions);
    let reference = reference::run(&case.partitions, &case.cfg);
    let flags = case.cfg.flags();
    let differing = reference
        .notes
        .get("merge drops a differing copy")
        .copied()
        .unwrap_or(0);
    let describe = |workers: usize, msg: String| {
        // Keep the inputs for inspection.
        let keep = std::env::temp_dir().join(format!("sessionflow-ref-seed-{seed}-{conflicting_gap_copies}"));
        let _ = std::fs::create_dir_all(&keep);
        for (i, p) in case.partitions.iter().enumerate() {
            let _ = std::fs::write(keep.join(format!("p{i}.jsonl")), p);
        }
        let hint = if differing > 0 {
            format!(" [{differing} merge(s) drop a differing copy: see merge_drops_the_copy_from_every_figure]")
        } else {
            String::new()
        };
        format!(
            "seed {seed}: {} partitions, flags {:?} --workers {workers} (inputs kept in {}){hint}:\n{msg}",
            case.partitions.len(),
            flags.join(" "),
            keep.display()
        )
    };
    let mut first: Option<EngineRun> = None;
    for workers in 1..=4 {
        let run = run_engine(dir.path(), &inputs, &flags, workers).map_err(|e| describe(workers, e))?;
        compare(&reference, &run).map_err(|e| describe(workers, e))?;
        if let Some(f) = &first {
            if f.output != run.output || f.dead != run.dead || f.stats != run.stats || f.experiments != run.experiments
            {
                return Err(describe(workers, "outputs differ in bytes from --workers 1".into()));
            }
        } else {
            first = Some(run);
        }
    }
    Ok(())
}

/// All the nasty cases, including copies of one event_id with different content in two gap
/// sessions that then merge.
#[test]
fn random_inputs_match_the_reference() {
    random_inputs(true);
}

/// The same without differing copies of gap events (isolates the other cases from the merge
/// of differing copies: see `merge_drops_the_copy_from_every_figure`).
#[test]
fn random_inputs_match_the_reference_without_conflicting_gap_copies() {
    random_inputs(false);
}

fn random_inputs(conflicting_gap_copies: bool) {
    let seeds: Vec<u64> = match std::env::var("SESSIONFLOW_REF_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => {
            let n = std::env::var("SESSIONFLOW_REF_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(100);
            (0..n).collect()
        }
    };
    // Two threads: each engine run is mostly process start-up and shut-down.
    let threads = 2;
    let mut failures: Vec<(u64, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = &seeds;
                scope.spawn(move || {
                    let mine = seeds.iter().skip(t).step_by(threads);
                    mine.filter_map(|&seed| check_seed(seed, conflicting_gap_copies).err().map(|e| (seed, e)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    failures.sort();
    if !failures.is_empty() {
        let ids: Vec<u64> = failures.iter().map(|f| f.0).collect();
        if std::env::var("SESSIONFLOW_REF_BRIEF").is_ok() {
            for (seed, e) in &failures {
                let hint = if e.contains("differing copy") {
                    "[differing copy] "
                } else {
                    ""
                };
                let line = e.lines().nth(1).unwrap_or("");
                eprintln!("seed {seed}: {hint}{}", line.chars().take(200).collect::<String>());
            }
        }
        let shown: Vec<&str> = failures.iter().take(5).map(|f| f.1.as_str()).collect();
        panic!(
            "{} of {} seeds failed: {ids:?}\n\n{}",
            failures.len(),
            seeds.len(),
            shown.join("\n\n")
        );
    }
}

/// The generator really produces the situations the comparison is meant to cover.
#[test]
fn generator_covers_the_nasty_cases() {
    let mut notes: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut truncated = 0;
    for seed in 0..150 {
        let case = reference::gen::generate(seed);
        let out = reference::run(&case.partitions, &case.cfg);
        truncated += out
            .snapshots
            .iter()
            .filter(|s| s["truncated"] == Value::Bool(true))
            .count() as u64;
        for (k, v) in out.notes {
            *notes.entry(k).or_default() += v;
        }
        for part in &case.partitions {
            for (_, line) in reference::split_lines(part) {
                let what = match line.len() {
                    65_536 => "line of exactly 64 KiB",
                    65_537.. => "line over 64 KiB",
                    _ if line.starts_with(b"  {") => "object wrapped in spaces",
                    _ if line.trim_ascii().is_empty() => "blank line",
                    _ => continue,
                };
                *notes.entry(what).or_default() += 1;
            }
            let cr = part.windows(3).filter(|w| w == b"\n\r\n").count() as u64;
            *notes.entry("line of a lone \\r").or_default() += cr;
            *notes.entry("CRLF line ends").or_default() += part.windows(2).filter(|w| w == b"\r\n").count() as u64;
        }
        *notes.entry("duplicates").or_default() += out.counters.duplicates;
        *notes.entry("invalid").or_default() += out.counters.invalid;
    }
    notes.insert("truncated snapshots", truncated);
    eprintln!("over 150 seeds: {notes:#?}");
    for (what, least) in [
        ("late assignment", 200),
        ("id session_closed", 30),
        ("gap session_closed", 30),
        ("id reopened after expiry", 10),
        ("gap duplicate", 10),
        ("merge", 30),
        ("merge duplicate", 3),
        ("duplicates", 100),
        ("invalid", 100),
        ("truncated snapshots", 100),
        ("same session_id twice in a window", 5),
        ("merge drops a differing copy", 10),
        ("line of exactly 64 KiB", 1),
        ("line over 64 KiB", 1),
        ("object wrapped in spaces", 3),
        ("blank line", 3),
        ("line of a lone \\r", 3),
        ("CRLF line ends", 100),
    ] {
        let n = notes.get(what).copied().unwrap_or(0);
        assert!(n >= least, "too few {what}: {n} < {least}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-written scenarios with exact expected output.
// ---------------------------------------------------------------------------------------------

/// Runs a scenario on 1 and 3 workers and checks the engine and the reference against exact
/// expected snapshots, dead letters (`(partition, offset, reason prefix)`) and counters.
fn scenario(
    partitions: &[&str],
    flags: &[&str],
    cfg: Config,
    snapshots: &[&str],
    dead: &[(usize, usize, &str)],
    counters: Value,
) {
    let parts: Vec<Vec<u8>> = partitions.iter().map(|p| p.as_bytes().to_vec()).collect();
    let expected: Vec<Value> = snapshots.iter().map(|s| serde_json::from_str(s).unwrap()).collect();
    let reference = reference::run(&parts, &cfg);
    // The reference first: it must agree with the hand-computed expectation.
    assert_eq!(
        reference.snapshots.len(),
        expected.len(),
        "reference: {:#?}",
        reference.snapshots
    );
    for (r, e) in reference.snapshots.iter().zip(&expected) {
        assert_eq!(r, e, "reference snapshot differs from the expectation");
    }
    assert_eq!(
        reference.dead_letters.len(),
        dead.len(),
        "reference dead letters: {:?}",
        reference.dead_letters
    );
    for (d, want) in reference.dead_letters.iter().zip(dead) {
        assert_eq!((d.partition, d.offset), (want.0, want.1));
        assert!(d.reason.starts_with(want.2), "{} vs {}", d.reason, want.2);
    }
    assert_eq!(reference.counters.to_json(), counters, "reference counters");

    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), &parts);
    let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    for workers in [1, 3] {
        let run = run_engine(dir.path(), &inputs, &flags, workers).unwrap();
        let out = lines(&run.output, "output").unwrap();
        let got: Vec<Value> = out.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "workers {workers}: engine output:\n{}",
            out.join("\n")
        );
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(
                g, e,
                "workers {workers}: snapshot {i} differs:\n  engine:   {g}\n  expected: {e}"
            );
        }
        let dl = lines(&run.dead, "dead").unwrap();
        assert_eq!(
            dl.len(),
            dead.len(),
            "workers {workers}: dead letters:\n{}",
            dl.join("\n")
        );
        for (l, want) in dl.iter().zip(dead) {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(
                (v["partition"].as_u64(), v["offset"].as_u64()),
                (Some(want.0 as u64), Some(want.1 as u64)),
                "{l}"
            );
            assert!(v["reason"].as_str().unwrap().starts_with(want.2), "{l}");
            let raw = v["raw"].as_str().unwrap();
            let line = partitions[want.0].split('\n').nth(want.1).unwrap();
            assert_eq!(raw, line.strip_suffix('\r').unwrap_or(line));
        }
        let stats: Value = serde_json::from_slice(&run.stats).unwrap();
        for (k, want) in counters.as_object().unwrap() {
            assert_eq!(stats.get(k), Some(want), "workers {workers}: stats.{k}: {stats}");
        }
    }
}

/// The example snapshot of the spec, with the input that produces it (default flags).
///
/// The spec's example lists no per-event `experiments` although the session has two pairs:
/// since optional fields are kept per event, the events here carry them (see the report).
#[test]
fn spec_example_snapshot() {
    let p0 = concat!(
        r#"{"event_id":"e1","session_id":"s1","visitor_id":"v1","project_id":7,"timestamp":1700000000000,"type":"pageview","attributes":{"browser":"chrome","country":"US"},"experiments":[{"experiment_id":12,"variation_id":1}]}"#,
        "\n",
        r#"{"event_id":"e2","session_id":"s1","visitor_id":"v1","project_id":7,"timestamp":1700000060000,"type":"click","name":"add_to_cart","revenue":1299,"tags":{"sku":"A1"},"attributes":{"browser":"chrome","country":"CA"},"experiments":[{"experiment_id":11,"variation_id":2}]}"#,
        "\n"
    );
    let e1 = r#"{"event_id":"e1","timestamp":1700000000000,"type":"pageview","experiments":[{"experiment_id":12,"variation_id":1}]}"#;
    let e2 = r#"{"event_id":"e2","timestamp":1700000060000,"type":"click","name":"add_to_cart","revenue":1299,"tags":{"sku":"A1"},"experiments":[{"experiment_id":11,"variation_id":2}],"attributes":{"country":"CA"}}"#;
    let first = format!(
        r#"{{"session_id":"s1","project_id":7,"visitor_id":"v1","start":1700000000000,"end":1700000000000,"event_count":1,"revenue":0,"attributes":{{"browser":"chrome","country":"US"}},"experiments":[[12,1]],"events":[{e1}],"truncated":false,"window":28333333,"closed":false}}"#
    );
    // The spec's example, verbatim apart from the per-event experiments.
    let example = format!(
        r#"{{"session_id":"s1","project_id":7,"visitor_id":"v1","start":1700000000000,"end":1700000060000,"event_count":2,"revenue":1299,"attributes":{{"browser":"chrome","country":"US"}},"experiments":[[11,2],[12,1]],"events":[{e1},{e2}],"truncated":false,"window":28333334,"closed":false}}"#
    );
    // end + gap = 1700001860000 < (m + 1) * 60000  <=>  m >= 28333364
    let last = example.replace(
        r#""window":28333334,"closed":false"#,
        r#""window":28333364,"closed":true"#,
    );
    let cfg = Config {
        window_ms: 60_000,
        gap_ms: 1_800_000,
        lateness_ms: 5_000,
        max_events: 1000,
    };
    scenario(
        &[p0],
        &[],
        cfg,
        &[&first, &example, &last],
        &[],
        serde_json::json!({"events_read":2,"accepted":2,"duplicates":0,"late":0,"invalid":0,
            "sessions_opened":1,"sessions_closed":1,"snapshots":3}),
    );
}

/// `T` = 1700000000000 = window 170000000 of 10 s.
const T: i64 = 1_700_000_000_000;

fn ev(id: &str, session: Option<&str>, visitor: &str, ts: i64, extra: &str) -> String {
    let sid = session.map_or(String::new(), |s| format!(r#""session_id":"{s}","#));
    format!(
        r#"{{"event_id":"{id}",{sid}"visitor_id":"{visitor}","project_id":1,"timestamp":{ts},"type":"pageview"{extra}}}"#
    )
}

fn listed(id: &str, ts: i64, extra: &str) -> String {
    format!(r#"{{"event_id":"{id}","timestamp":{ts},"type":"pageview"{extra}}}"#)
}

#[allow(clippy::too_many_arguments)]
fn snap(
    id: &str,
    visitor: &str,
    start: i64,
    end: i64,
    count: usize,
    revenue: i64,
    attrs: &str,
    events: &[String],
    truncated: bool,
    window: i64,
    closed: bool,
    merged: Option<&str>,
) -> String {
    let merged = merged.map_or(String::new(), |m| format!(r#","merged_into":"{m}""#));
    format!(
        r#"{{"session_id":"{id}","project_id":1,"visitor_id":"{visitor}","start":{start},"end":{end},"event_count":{count},"revenue":{revenue},"attributes":{attrs},"experiments":[],"events":[{}],"truncated":{truncated},"window":{window},"closed":{closed}{merged}}}"#,
        events.join(",")
    )
}

/// A gap session opened by a late event absorbs the visitor's open session through a bridging
/// event; an `event_id` both have moves from `accepted` to `duplicates`.
#[test]
fn gap_sessions_merge() {
    let s = 1000;
    // W = 10 s, gap = 30 s, L = 0.
    let p0 = [
        ev("a", None, "v1", T, ""),
        ev("m", None, "v1", T + s, ""),      // S1 = v1@T = {a, m}
        ev("b", None, "v1", T + 20 * s, ""), // window +2, WM = T+20s
        ev("c", None, "v1", T - 70 * s, ""), // late, window +2: opens S2 = v1@(T-70s)
        ev("m", None, "v1", T - 40 * s, ""), // joins S2 (a different copy of m)
        ev("x", None, "v1", T - 20 * s, ""), // matches S1 and S2: S1 merges into S2
    ]
    .join("\n");
    let w0 = T / 10_000;
    let s1 = "v1@1700000000000";
    let s2 = "v1@1699999930000";
    let first = snap(
        s1,
        "v1",
        T,
        T + s,
        2,
        0,
        "{}",
        &[listed("a", T, ""), listed("m", T + s, "")],
        false,
        w0,
        false,
        None,
    );
    let merged = snap(
        s1,
        "v1",
        T,
        T + s,
        2,
        0,
        "{}",
        &[listed("a", T, ""), listed("m", T + s, "")],
        false,
        w0 + 2,
        true,
        Some(s2),
    );
    let all = [
        listed("c", T - 70 * s, ""),
        listed("m", T - 40 * s, ""),
        listed("x", T - 20 * s, ""),
        listed("a", T, ""),
        listed("b", T + 20 * s, ""),
    ];
    // S2's snapshots sort before S1's in window +2 ("v1@16..." < "v1@17...").
    let survivor = snap(
        s2,
        "v1",
        T - 70 * s,
        T + 20 * s,
        5,
        0,
        "{}",
        &all,
        false,
        w0 + 2,
        false,
        None,
    );
    // end + gap = T + 50 s < (m + 1) * 10 s  <=>  m >= w0 + 5
    let closed = snap(
        s2,
        "v1",
        T - 70 * s,
        T + 20 * s,
        5,
        0,
        "{}",
        &all,
        false,
        w0 + 5,
        true,
        None,
    );
    let cfg = Config {
        window_ms: 10_000,
        gap_ms: 30_000,
        lateness_ms: 0,
        max_events: 1000,
    };
    scenario(
        &[&p0],
        &["--window", "10s", "--gap", "30s", "--lateness", "0s"],
        cfg,
        &[&first, &survivor, &merged, &closed],
        &[],
        serde_json::json!({"events_read":6,"accepted":5,"duplicates":1,"late":0,"invalid":0,
            "sessions_opened":2,"sessions_closed":2,"snapshots":4}),
    );
}

/// A late event of a closed session (with an id, and a gap session) is dead-lettered while the
/// key is in the closed set; after its expiry the same key opens a new session.
#[test]
fn closed_set_rejects_then_reopens() {
    let s = 1000;
    // W = 10 s, gap = 20 s (closed set lasts ceil(20/10) = 2 windows), L = 0.
    let lines = [
        ev("e1", Some("s1"), "v1", T, ""),          // s1 opens at w0, closes at w0+2
        ev("g1", None, "v2", T, ""),                // v2@T opens at w0, closes at w0+2
        ev("e3", Some("s1"), "v1", T + 35 * s, ""), // w0+3: s1 in the closed set
        ev("g2", None, "v2", T + 15 * s, ""),       // late to w0+3: within v2@T's range, closed
        ev("e2", Some("s9"), "v1", T + 60 * s, ""), // w0+6
        ev("e4", Some("s1"), "v1", T + 36 * s, ""), // late to w0+6: closed entry expired: reopens
    ];
    let p0 = lines.join("\r\n") + "\r\n";
    let w0 = T / 10_000;
    let e1 = [listed("e1", T, "")];
    let g1 = [listed("g1", T, "")];
    let e4 = [listed("e4", T + 36 * s, "")];
    let e2 = [listed("e2", T + 60 * s, "")];
    let v2 = "v2@1700000000000";
    let expected = [
        snap("s1", "v1", T, T, 1, 0, "{}", &e1, false, w0, false, None),
        snap(v2, "v2", T, T, 1, 0, "{}", &g1, false, w0, false, None),
        snap("s1", "v1", T, T, 1, 0, "{}", &e1, false, w0 + 2, true, None),
        snap(v2, "v2", T, T, 1, 0, "{}", &g1, false, w0 + 2, true, None),
        // e4: end + gap = T + 56 s < (w0 + 7) * 10 s: opens and closes in w0+6.
        snap(
            "s1",
            "v1",
            T + 36 * s,
            T + 36 * s,
            1,
            0,
            "{}",
            &e4,
            false,
            w0 + 6,
            true,
            None,
        ),
        snap(
            "s9",
            "v1",
            T + 60 * s,
            T + 60 * s,
            1,
            0,
            "{}",
            &e2,
            false,
            w0 + 6,
            false,
            None,
        ),
        snap(
            "s9",
            "v1",
            T + 60 * s,
            T + 60 * s,
            1,
            0,
            "{}",
            &e2,
            false,
            w0 + 8,
            true,
            None,
        ),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let cfg = Config {
        window_ms: 10_000,
        gap_ms: 20_000,
        lateness_ms: 0,
        max_events: 1000,
    };
    scenario(
        &[&p0],
        &["--window", "10s", "--gap", "20s", "--lateness", "0s"],
        cfg,
        &expected,
        &[(0, 2, "session_closed"), (0, 3, "session_closed")],
        serde_json::json!({"events_read":6,"accepted":4,"duplicates":0,"late":2,"invalid":0,
            "sessions_opened":4,"sessions_closed":4,"snapshots":7}),
    );
}

/// `--max-events 2`: the first two events in `(timestamp, event_id)` order are listed, the
/// counters stay exact; an earlier event arriving in a later window takes the first place and
/// the session's attributes (per-event attributes keep only what differs).
#[test]
fn truncation_keeps_exact_counters() {
    let s = 1000;
    // W = 10 s, gap = 20 s, L = 5 s, max-events 2.
    let lines = [
        ev("a", Some("s1"), "v1", T, r#","attributes":{"browser":"chrome","country":"US"}"#),
        ev("b", Some("s1"), "v1", T + s, r#","revenue":100"#),
        ev("b", Some("s1"), "v1", T + s, r#","revenue":100"#),
        ev("c", Some("s1"), "v1", T + 2 * s, r#","revenue":250,"attributes":{"browser":"chrome"}"#),
        r#"{"event_id":"bad","session_id":"s1","visitor_id":"v1","project_id":1.0,"timestamp":1700000000000,"type":"pageview"}"#.to_string(),
        ev("d", Some("s1"), "v1", T + 22 * s, ""),  // w0+2; WM = T+17s
        ev("e", Some("s1"), "v1", T - 3 * s, r#","revenue":-50,"attributes":{"browser":"firefox"}"#), // late: w0+1
    ];
    let p0 = lines.join("\n");
    let w0 = T / 10_000;
    let a_first = listed("a", T, r#","attributes":{"browser":"chrome","country":"US"}"#);
    let b = listed("b", T + s, r#","revenue":100"#);
    let e = listed("e", T - 3 * s, r#","revenue":-50"#);
    let a_later = listed("a", T, r#","attributes":{"browser":"chrome"}"#);
    let chrome = r#"{"browser":"chrome","country":"US"}"#;
    let firefox = r#"{"browser":"firefox","country":"US"}"#;
    let expected = [
        snap(
            "s1",
            "v1",
            T,
            T + 2 * s,
            3,
            350,
            chrome,
            &[
                a_first.replace(r#","attributes":{"browser":"chrome","country":"US"}"#, ""),
                b,
            ],
            true,
            w0,
            false,
            None,
        ),
        snap(
            "s1",
            "v1",
            T - 3 * s,
            T + 2 * s,
            4,
            300,
            firefox,
            &[e.clone(), a_later.clone()],
            true,
            w0 + 1,
            false,
            None,
        ),
        snap(
            "s1",
            "v1",
            T - 3 * s,
            T + 22 * s,
            5,
            300,
            firefox,
            &[e.clone(), a_later.clone()],
            true,
            w0 + 2,
            false,
            None,
        ),
        // end + gap = T + 42 s < (m + 1) * 10 s  <=>  m >= w0 + 4
        snap(
            "s1",
            "v1",
            T - 3 * s,
            T + 22 * s,
            5,
            300,
            firefox,
            &[e, a_later],
            true,
            w0 + 4,
            true,
            None,
        ),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let cfg = Config {
        window_ms: 10_000,
        gap_ms: 20_000,
        lateness_ms: 5_000,
        max_events: 2,
    };
    scenario(
        &[&p0],
        &[
            "--window",
            "10s",
            "--gap",
            "20s",
            "--lateness",
            "5s",
            "--max-events",
            "2",
        ],
        cfg,
        &expected,
        &[(0, 4, "invalid")],
        serde_json::json!({"events_read":7,"accepted":5,"duplicates":1,"late":0,"invalid":1,
            "sessions_opened":1,"sessions_closed":1,"snapshots":4}),
    );
}

/// When a gap session merges away, its copy of an `event_id` the survivor already has is
/// dropped (moved from `accepted` to `duplicates`); every figure of the survivor (`start`/`end`,
/// `attributes`, `experiments`, `revenue`, closing) is over accepted events only, so the dropped
/// copy must leave no trace, even when it differs from the kept one.
#[test]
fn merge_drops_the_copy_from_every_figure() {
    let s = 1000;
    // W = 10 s, gap = 30 s, L = 0.
    let dropped_extra =
        r#","revenue":5,"attributes":{"browser":"opera"},"experiments":[{"experiment_id":1,"variation_id":1}]"#;
    let lines = [
        ev("d", None, "v1", T + 40 * s, dropped_extra), // w0+4: opens A = v1@(T+40s)
        ev("p", Some("s9"), "v9", T + 50 * s, ""),      // w0+5, WM = T+50s
        ev("d", None, "v1", T, ""),                     // late, w0+5: opens B = v1@T (A: T+10s > T)
        ev("x", None, "v1", T + 15 * s, ""),            // w0+5: matches A and B: A merges into B
    ];
    let p0 = lines.join("\n") + "\n";
    let w0 = T / 10_000;
    let a = "v1@1700000040000";
    let b = "v1@1700000000000";
    let d_dropped = [listed(
        "d",
        T + 40 * s,
        r#","revenue":5,"experiments":[{"experiment_id":1,"variation_id":1}]"#,
    )];
    let with_exp = |line: String| line.replace(r#""experiments":[]"#, r#""experiments":[[1,1]]"#);
    let opera = r#"{"browser":"opera"}"#;
    let pp = [listed("p", T + 50 * s, "")];
    let dx = [listed("d", T, ""), listed("x", T + 15 * s, "")];
    let expected = [
        with_exp(snap(
            a,
            "v1",
            T + 40 * s,
            T + 40 * s,
            1,
            5,
            opera,
            &d_dropped,
            false,
            w0 + 4,
            false,
            None,
        )),
        snap(
            "s9",
            "v9",
            T + 50 * s,
            T + 50 * s,
            1,
            0,
            "{}",
            &pp,
            false,
            w0 + 5,
            false,
            None,
        ),
        // B = {d@T, x@T+15s}: end + gap = T + 45 s < (w0 + 6) * 10 s: B closes in w0+5.
        snap(b, "v1", T, T + 15 * s, 2, 0, "{}", &dx, false, w0 + 5, true, None),
        with_exp(snap(
            a,
            "v1",
            T + 40 * s,
            T + 40 * s,
            1,
            5,
            opera,
            &d_dropped,
            false,
            w0 + 5,
            true,
            Some(b),
        )),
        snap(
            "s9",
            "v9",
            T + 50 * s,
            T + 50 * s,
            1,
            0,
            "{}",
            &pp,
            false,
            w0 + 8,
            true,
            None,
        ),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let cfg = Config {
        window_ms: 10_000,
        gap_ms: 30_000,
        lateness_ms: 0,
        max_events: 1000,
    };
    scenario(
        &[&p0],
        &["--window", "10s", "--gap", "30s", "--lateness", "0s"],
        cfg,
        &expected,
        &[],
        serde_json::json!({"events_read":4,"accepted":3,"duplicates":1,"late":0,"invalid":0,
            "sessions_opened":3,"sessions_closed":3,"snapshots":5}),
    );
}
