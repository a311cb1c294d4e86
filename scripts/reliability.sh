#!/usr/bin/env bash
# The reliability table: runs every fault scenario (the multi-host harness in
# tests/faults.rs, the bridge's loss tests, the full disk) and writes one
# markdown table, fault × outcome × time to recover, to
# $CARGO_TARGET_DIR/reliability.md (the README's Reliability section is copied
# from it). Needs root (network namespaces, tmpfs) and Mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
records="$CARGO_TARGET_DIR/tmp/reliability"
rm -rf "$records"
export CI="${CI:-true}"
cargo build -q -p continuum-deploy-agent
cargo test -q --test faults --test bridge_loss --test disk_full -- --test-threads 2
out="$CARGO_TARGET_DIR/reliability.md"
{
  echo "| fault | outcome | recovered in |"
  echo "|---|---|---|"
  for f in cut-link loss delay agent-pause agent-kill orchestrator-kill bridge-partition broker-restart bridge-kill disk-full; do
    [ -f "$records/$f.tsv" ] || { echo "reliability: no record of $f" >&2; exit 1; }
    IFS=$'\t' read -r fault outcome seconds < "$records/$f.tsv"
    echo "| $fault | $outcome | ${seconds} s |"
  done
} > "$out"
cat "$out"
echo "reliability: the table is in $out" >&2
