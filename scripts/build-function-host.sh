#!/usr/bin/env bash
# Builds the function host as a static executable (glibc, crt-static), the
# form that runs in a function image FROM scratch, and prints its path.
# Its own target triple keeps these flags away from the rest of the build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
triple="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --quiet --target "$triple" -p continuum-function-host >&2
echo "$CARGO_TARGET_DIR/$triple/release/continuum-function-host"
