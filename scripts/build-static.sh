#!/usr/bin/env bash
# Builds one of the workspace's executables static (glibc, crt-static), the
# form that runs in an image FROM scratch, and prints its path:
#   scripts/build-static.sh continuum-function-host
#   scripts/build-static.sh continuum-deploy-agent   (prints .../continuum-agent)
# Its own target triple keeps these flags away from the rest of the build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
package="${1:?usage: scripts/build-static.sh PACKAGE}"
case "$package" in
  continuum-deploy-agent) bin=continuum-agent ;;
  *) bin="$package" ;;
esac
triple="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --quiet --target "$triple" -p "$package" --bin "$bin" >&2
echo "$CARGO_TARGET_DIR/$triple/release/$bin"
