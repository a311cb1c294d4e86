#!/usr/bin/env bash
# Runs every benchmark and writes one report: target/bench-report/report.md
# (a table per bench: each figure, its baseline measured in the same run and
# the ratio) and report.csv. The README's tables are copied from it.
#
#   scripts/bench.sh                 every bench once
#   BENCH_RUNS=3 scripts/bench.sh    three runs each: medians and spread
#   scripts/bench.sh models bridge   only these benches
#
# A bench whose real parts are missing (Docker, Mosquitto, Chromium, avrdude)
# is skipped with the reason, and the report says so.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
out="$PWD/target/bench-report"
runs="${BENCH_RUNS:-1}"
# name, then the cargo arguments that select it
benches=(
  "models|-p continuum-models --bench models"
  "orchestrator|-p continuum-orchestrator --bench fanout"
  "gateway|-p continuum-gateway --bench gateway"
  "bridge|-p continuum-gateway --bench bridge"
  "function|-p continuum-function-host --bench function"
  "faas|--bench faas"
  "flash|-p continuum-deploy-agent --bench flash"
  "dashboard|--bench dashboard"
  "soak|--bench soak"
  "fleet|--bench fleet"
)
wanted=("$@")
rm -rf "$out"
mkdir -p "$out/raw"
export CONTINUUM_BENCH_REPORT="$out/raw"
if [ -z "${CONTINUUM_FUNCTION_HOST:-}" ]; then
  CONTINUUM_FUNCTION_HOST="$(scripts/build-function-host.sh)"
  export CONTINUUM_FUNCTION_HOST
fi
if [ -z "${CONTINUUM_SIM_BOARD:-}" ] && command -v avrdude >/dev/null; then
  CONTINUUM_SIM_BOARD="$(scripts/build-sim-board.sh)" || true
  export CONTINUUM_SIM_BOARD
fi
for entry in "${benches[@]}"; do
  name="${entry%%|*}"
  args="${entry#*|}"
  if [ "${#wanted[@]}" -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then
    continue
  fi
  for run in $(seq 1 "$runs"); do
    echo "== bench $name (run $run of $runs)" >&2
    # shellcheck disable=SC2086
    if ! cargo bench --locked $args 2>&1 | tee "$out/raw/$name.run$run.log"; then
      echo "bench $name failed (run $run); see $out/raw/$name.run$run.log" >&2
      echo "failed in run $run" >"$out/raw/$name.failed"
    fi
  done
done
python3 scripts/bench-report.py "$out/raw" "$out"
echo "report: $out/report.md and $out/report.csv" >&2
