#!/usr/bin/env bash
# The main job: the smart-building system running on this machine, on embedded
# defaults (`continuum up`). Installs what is missing, builds, then runs until
# Ctrl-C, which stops everything and removes its containers. Extra arguments go
# to `continuum up` (see `continuum up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo build --release --locked --quiet -p continuum -p continuum-deploy-agent --bins
host="$(scripts/build-function-host.sh)"
examples/smart-building/firmware/build.sh
board="$(scripts/build-sim-board.sh)"
exec "$CARGO_TARGET_DIR/release/continuum" up --function-host "$host" --board "$board" "$@"
