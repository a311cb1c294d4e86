#!/usr/bin/env bash
# The main job, on embedded defaults: the smart-building example through Continuum.
# It validates the two versions of the megamodel, shows what changes between them and
# the plan that applies the change; then runs an orchestrator (on loopback, with its
# data in a temporary directory), applies v1 then v2, and shows the status, the
# history, the diff between the revisions and a rollback. (Gateway agents, which
# enact the subsystem models, come with issue #5: until one connects, each subsystem's
# model waits for its gateway.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo build --release --locked -q --bin continuum
continuum="$CARGO_TARGET_DIR/release/continuum"
ex=examples/smart-building
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "continuum $*"; "$continuum" "$@"; }

run validate $ex/v1.json $ex/v2.json examples/templates/shell-function.json
run diff $ex/v1.json $ex/v2.json
run plan $ex/v1.json $ex/v2.json

data=$(mktemp -d)
log="$data/serve.log"
serve_pid=
cleanup() {
    if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
    rm -rf "$data"
}
trap cleanup EXIT
say "continuum serve --listen 127.0.0.1:0 --data-dir $data/orchestrator &"
"$continuum" serve --listen 127.0.0.1:0 --data-dir "$data/orchestrator" 2>"$log" &
serve_pid=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$log" && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
CONTINUUM_SERVER=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log" | head -n1)
export CONTINUUM_SERVER
echo "orchestrator at $CONTINUUM_SERVER"

run apply -f $ex/v1.json -m "first deployment"
run apply -f $ex/v2.json -m "presence on door events, firmware v2"
run status
run history
run diff --from 1 --to 2
run rollback --to 1
run history
kill -TERM "$serve_pid"
wait "$serve_pid"
serve_pid=
say "orchestrator stopped; its data directory keeps every revision"
