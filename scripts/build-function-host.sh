#!/usr/bin/env bash
# Builds the function host as a static executable (function images are FROM
# scratch) and prints its path.
set -euo pipefail
exec "$(dirname "$0")/build-static.sh" continuum-function-host
