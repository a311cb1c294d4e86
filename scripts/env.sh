# Shared by the scripts: one target directory outside the clone, reused across runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/continuum/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"
# The Python environment scripts/setup.sh makes for the example Python client.
export CONTINUUM_PYTHON="${CONTINUUM_PYTHON:-${XDG_CACHE_HOME:-$HOME/.cache}/continuum/python/bin/python}"
