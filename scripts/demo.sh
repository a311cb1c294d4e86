#!/usr/bin/env bash
# The main job, on embedded defaults: the smart-building example through Continuum.
# (Until the orchestrator and gateway agents exist, this validates the two versions
# of the megamodel, shows what changes between them and the plan that applies it.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo build --release --locked -q --bin continuum
continuum="$CARGO_TARGET_DIR/release/continuum"
ex=examples/smart-building
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
say continuum validate $ex/v1.json $ex/v2.json examples/templates/shell-function.json
"$continuum" validate $ex/v1.json $ex/v2.json examples/templates/shell-function.json
say continuum diff $ex/v1.json $ex/v2.json
"$continuum" diff $ex/v1.json $ex/v2.json
say continuum plan $ex/v1.json $ex/v2.json
"$continuum" plan $ex/v1.json $ex/v2.json
