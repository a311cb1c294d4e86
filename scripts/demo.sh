#!/usr/bin/env bash
# The main job, on embedded defaults: the smart-building example through Continuum.
# It validates the two versions of the megamodel, shows what changes between them and
# the plan that applies the change; then runs an orchestrator (on loopback, with its
# data in a temporary directory), applies v1 then v2, and shows the status, the
# history, the diff between the revisions and a rollback. (No gateway of the
# smart-building example runs here: its subsystems wait for their gateways.) Last, a
# gateway agent deploys the edge-hello example for real on this machine's Docker
# engine (images built locally FROM scratch with Debian's busybox), updates it, and
# everything is removed at the end.
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
gateway_pid=
cleanup() {
    for pid in $gateway_pid $serve_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if command -v docker >/dev/null 2>&1; then
        ids=$(docker ps -aq --filter label=continuum.subsystem=edge 2>/dev/null || true)
        [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
        imgs=$(docker images -q 'continuum/web' 2>/dev/null; docker images -q 'continuum/ticker' 2>/dev/null)
        [ -z "$imgs" ] || docker rmi -f $imgs >/dev/null 2>&1 || true
    fi
    rm -rf "$data"
}
trap cleanup EXIT
# One machine we control: its containers may use host paths, devices and the
# host network (the examples' functions do; without a policy nothing may).
say "continuum serve --listen 127.0.0.1:0 --data-dir $data/orchestrator --policy examples/policies/single-machine.json &"
"$continuum" serve --listen 127.0.0.1:0 --data-dir "$data/orchestrator" \
    --policy examples/policies/single-machine.json 2>"$log" &
serve_pid=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$log" && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
CONTINUUM_SERVER=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log" | head -n1)
export CONTINUUM_SERVER
echo "orchestrator at $CONTINUUM_SERVER"
grep 'global bus' "$log" || true

run apply -f $ex/v1.json -m "first deployment"
run apply -f $ex/v2.json -m "presence on door events, firmware v2"
run status
run history
run diff --from 1 --to 2
run rollback --to 1
run history
if docker info >/dev/null 2>&1; then
    mkdir -p "$data/edge-hello"
    cp -r examples/edge-hello/. "$data/edge-hello/"
    cp /bin/busybox "$data/edge-hello/image/busybox"
    say "continuum gateway --id edge-gw --context-root $data/edge-hello &"
    # Its local broker takes the next ports: the global bus has 1883 and 1884 here.
    CONTINUUM_LOG=info "$continuum" gateway --id edge-gw --orchestrator "$CONTINUUM_SERVER" \
        --mqtt-listen 127.0.0.1:1885 --mqtt5-listen 127.0.0.1:1886 \
        --data-dir "$data/gateway" --context-root "$data/edge-hello" --interval 2s \
        --policy examples/edge-hello/policy.json 2>"$data/gateway.log" &
    gateway_pid=$!
    run apply -f "$data/edge-hello/v1.json" -m "edge-hello, deployed for real" --wait 2m ||
        { cat "$data/gateway.log" >&2; exit 1; }
    run status
    # The bridge: the gateway announced itself on the global bus (retained), and a
    # message published on its local broker crosses to the global bus (route edge/#).
    say "mosquitto_sub -p 1884 -t 'continuum/gateways/+/status' -C 1"
    mosquitto_sub -h 127.0.0.1 -p 1884 -V mqttv5 -t 'continuum/gateways/+/status' -v -C 1 -W 10
    say "mosquitto_pub -p 1886 -t edge/hello (local) → mosquitto_sub -p 1884 -t 'edge/#' (global)"
    mosquitto_sub -h 127.0.0.1 -p 1884 -V mqttv5 -t 'edge/#' -v -C 1 -W 20 >"$data/crossed" &
    sub_pid=$!
    for _ in $(seq 1 100); do
        [ -s "$data/crossed" ] && break
        mosquitto_pub -h 127.0.0.1 -p 1886 -V mqttv5 -q 1 -t edge/hello -m "hello from the edge"
        sleep 0.2
    done
    wait "$sub_pid" || { echo "the message did not cross the bridge" >&2; cat "$data/gateway.log" >&2; exit 1; }
    cat "$data/crossed"
    say "docker ps --filter label=continuum.subsystem=edge"
    docker ps --filter label=continuum.subsystem=edge --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}'
    run apply -f "$data/edge-hello/v2.json" -m "a new greeting: web is replaced, ticker keeps running" --wait 2m ||
        { cat "$data/gateway.log" >&2; exit 1; }
    run status
    docker ps --filter label=continuum.subsystem=edge --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}'
else
    echo "(no usable Docker engine here: the gateway part of the demo is skipped)"
fi
kill -TERM "$serve_pid"
wait "$serve_pid"
serve_pid=
say "orchestrator stopped; its data directory keeps every revision"

# Leaf devices: `continuum up` (process driver) flashes firmware v1 onto the simulated
# Uno through the sensor gateway's deploy agent; firmware v2 is then applied and
# reflashed (watch its stage and percent), and applying it again flashes nothing.
cargo build --release --locked -q -p continuum-deploy-agent --bins
examples/smart-building/firmware/build.sh
host="$(scripts/build-function-host.sh)"
board="$(scripts/build-sim-board.sh)"
v2="$ex/.up-firmware-v2.json"
sed 's/arduino-flow-v1\.hex/arduino-flow-v2.hex/' $ex/up.json >"$v2"
say "continuum up --driver process &"
"$continuum" up --driver process --listen 127.0.0.1:0 --mqtt-port 0 --color never \
    --function-host "$host" --board "$board" --data-dir "$data/up" >"$data/up.log" 2>&1 &
up_pid=$!
gateway_pid="$gateway_pid $up_pid"
for _ in $(seq 600); do
    grep -q 'running; Ctrl-C' "$data/up.log" && break
    kill -0 "$up_pid" 2>/dev/null || { cat "$data/up.log"; rm -f "$v2"; exit 1; }
    sleep 0.2
done
grep -E 'up:|flash' "$data/up.log" | head -n 20
CONTINUUM_SERVER=$(sed -n 's/.*orchestrator on \([^ ,]*\).*/\1/p' "$data/up.log" | head -n1)
export CONTINUUM_SERVER
run status
run apply -f "$v2" -m "firmware v2: the door contact debounced" --wait 2m || { rm -f "$v2"; exit 1; }
say "the reflash, as continuum up showed it"
grep -E 'generation 2|sensors: step flash' "$data/up.log" | grep -E 'v2|891256|writing|verifying|confirming' | tail -n 8 || true
run status
run apply -f "$v2" -m "firmware v2 again" --wait 2m || { rm -f "$v2"; exit 1; }
rm -f "$v2"
kill -INT "$up_pid"
wait "$up_pid" || true
say "continuum up stopped"

