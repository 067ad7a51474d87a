#!/usr/bin/env bash
# The one test command (README, CI): formatting, lints, every test, including the tests that
# need the real Kafka and HBase servers, which this script starts (downloading them once from
# Maven Central) and stops again.
#
#   scripts/test.sh            # everything
#   SKIP_SERVICES=1 scripts/test.sh   # no servers: the server tests are left out
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
command -v cmake >/dev/null || { echo "cmake is required (librdkafka is built with it)"; exit 1; }
cargo --version
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "shell scripts parse"
for f in scripts/*.sh .ci/run; do bash -n "$f"; done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc -D warnings (broken or private intra-doc links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "build (every target: lib, bin, tests, examples, benches)"
cargo build --workspace --all-targets --locked

services_up=0
cleanup() {
  if [ "$services_up" = 1 ]; then
    step "services down"
    scripts/services.sh down || true
  fi
}
trap cleanup EXIT

ignored=()
if [ "${SKIP_SERVICES:-0}" != 1 ]; then
  step "services up (Kafka, HBase)"
  # Stop them at the end only if this run started them (a developer's running servers stay).
  if ! scripts/services.sh status >/dev/null 2>&1; then services_up=1; fi
  # Its output is the addresses: KAFKA_BROKERS, KAFKA_SASL_SSL_BROKERS, KAFKA_TLS_CA, HBASE_THRIFT.
  addresses=$(scripts/services.sh up)
  while IFS= read -r line; do
    if [[ -n $line ]]; then export "${line?}"; fi
  done <<<"$addresses"
  # Tests that need a real server are #[ignore]d by default; run them here.
  ignored=(--include-ignored)
fi

step "cargo test"
cargo test --workspace --locked -- "${ignored[@]}"
