#!/usr/bin/env bash
# Builds a profile-guided (PGO) release binary of sessionflow, for deployments.
#
#   scripts/build-pgo.sh            # -> target/pgo/optimized/release/sessionflow
#
# 1. a release build instrumented to count what runs (`-Cprofile-generate`);
# 2. training: it generates PGO_EVENTS events (default 300000, 4 partitions, seed 7: not the
#    benchmark's data) and replays them with 2 workers and with 1, writing every output file;
# 3. the counts merged with rustup's llvm-profdata (component llvm-tools, installed if missing);
# 4. the release build again, laid out by those counts (`-Cprofile-use`).
#
# The output is the same as the plain release build's (the training checks it against the
# plain build byte for byte); only the speed differs (README, "Benchmark figures"). Needs no
# server: the training replays files. Takes about two release builds (~7 min on 2 cores).
# PGO_DIR (default target/pgo) holds everything it makes; RUSTFLAGS already set are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${PGO_DIR:-target/pgo}
events=${PGO_EVENTS:-300000}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
say() { echo "build-pgo: $*" >&2; }

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  say "llvm-profdata not found: installing rustup's llvm-tools component"
  rustup component add llvm-tools >&2 || {
    say "cannot install llvm-tools (run: rustup component add llvm-tools)"
    exit 1
  }
fi

say "1/4 instrumented release build"
rm -rf "$dir/profiles"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$dir/profiles" \
  cargo build --release --locked --bin sessionflow --target-dir "$dir/instrumented"
bin="$dir/instrumented/release/sessionflow"

say "2/4 training: $events generated events, replayed with 2 workers and with 1"
rm -rf "$dir/train" && mkdir -p "$dir/train/out"
"$bin" generate --out-dir "$dir/train/in" --events "$events" --partitions 4 --seed 7 >&2
inputs=()
for p in 0 1 2 3; do inputs+=(--input "$dir/train/in/p$p.jsonl"); done
for w in 2 1; do
  "$bin" replay "${inputs[@]}" --workers "$w" --output "$dir/train/out/snapshots-$w.jsonl" \
    --dead-letter "$dir/train/out/dead-$w.jsonl" --stats "$dir/train/out/stats-$w.json" >&2
done

say "3/4 merging the profiles"
"$profdata" merge -o "$dir/sessionflow.profdata" "$dir/profiles"

say "4/4 release build laid out by the profile"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$dir/sessionflow.profdata" \
  cargo build --release --locked --bin sessionflow --target-dir "$dir/optimized"
out="$dir/optimized/release/sessionflow"

# The same answers as the instrumented (plain) build on the training data.
"$out" replay "${inputs[@]}" --workers 2 --output "$dir/train/out/check.jsonl" \
  --dead-letter "$dir/train/out/check-dead.jsonl" --stats "$dir/train/out/check-stats.json" >&2
for f in snapshots-2.jsonl:check.jsonl dead-2.jsonl:check-dead.jsonl stats-2.json:check-stats.json; do
  cmp -s "$dir/train/out/${f%%:*}" "$dir/train/out/${f##*:}" || {
    say "the PGO build's ${f##*:} differs from the plain build's ${f%%:*}"
    exit 1
  }
done
rm -rf "$dir/train"
say "done: $out"
echo "$out"
