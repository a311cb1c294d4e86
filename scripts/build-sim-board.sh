#!/usr/bin/env bash
# Builds the simulated Arduino Uno (deploy-agent/sim/sim-uno.c over libsimavr)
# and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
out="$CARGO_TARGET_DIR/sim/continuum-sim-uno"
mkdir -p "$(dirname "$out")"
if [ ! -x "$out" ] || [ deploy-agent/sim/sim-uno.c -nt "$out" ]; then
  cc -O2 -Wall -Wextra -Werror -o "$out.tmp" deploy-agent/sim/sim-uno.c \
    -lsimavr -lsimavrparts -lelf -lpthread -lutil
  mv "$out.tmp" "$out"
fi
echo "$out"
