#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the static function host (function images are FROM scratch)" >&2
CONTINUUM_FUNCTION_HOST="$(scripts/build-function-host.sh)"
export CONTINUUM_FUNCTION_HOST
echo "== the deploy agent, static (it runs in containers FROM scratch)" >&2
CONTINUUM_STATIC_AGENT="$(scripts/build-static.sh continuum-deploy-agent)"
export CONTINUUM_STATIC_AGENT
echo "== the example's firmware (avr-gcc)" >&2
examples/smart-building/firmware/build.sh
echo "== the simulated Arduino Uno (libsimavr)" >&2
CONTINUUM_SIM_BOARD="$(scripts/build-sim-board.sh)"
export CONTINUUM_SIM_BOARD
echo "== cargo test" >&2
cargo test --workspace --locked
echo "== every benchmark once, a few iterations with its real parts (smoke: a broken bench fails here)" >&2
cargo test --workspace --bench '*' --locked
