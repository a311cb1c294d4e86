#!/usr/bin/env bash
# Installs what Continuum's build, demo and tests need on a fresh Debian machine.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# A static busybox: test images are built FROM scratch with it (no registry here).
# Mosquitto and its clients: interop tests and the baseline of the bridge benchmark.
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
# faketime: a gateway whose wall clock is behind the orchestrator's.
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
# ip (network namespaces): the bridge's partition test.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# iptables: random loss on a host's link in the multi-host fault harness.
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need_apt+=(iptables)
# Leaf devices: avr-gcc builds the example's firmware, avrdude is the reference
# flasher, simavr (and its library) runs the simulated Arduino Uno, the Arduino
# core brings its bootloader, socat makes bare pty pairs.
command -v avr-gcc >/dev/null 2>&1 || need_apt+=(gcc-avr binutils-avr)
[ -f /usr/lib/avr/include/avr/io.h ] || need_apt+=(avr-libc)
command -v avrdude >/dev/null 2>&1 || need_apt+=(avrdude)
[ -f /usr/include/simavr/sim_avr.h ] || need_apt+=(libsimavr-dev libelf-dev)
command -v simavr >/dev/null 2>&1 || need_apt+=(simavr)
[ -f /usr/share/arduino/hardware/arduino/avr/bootloaders/atmega/ATmegaBOOT_168_atmega328.hex ] || need_apt+=(arduino-core-avr)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
# Chromium (headless): the dashboard is tested in a real browser.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# OpenSSH: gateways copy deploy agents to hosts without Docker over SSH (the
# tests run a real sshd on loopback).
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
# protoc: the etcd client's build compiles etcd's protocol.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
# etcd: the highly available orchestrator's store (a 3-member cluster on
# loopback in tests).
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
linkage=$(LC_ALL=C ldd /bin/busybox 2>&1 || true)
case "$linkage" in *"not a dynamic"*) ;; *) need_apt+=(busybox-static) ;; esac

if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# A Python environment with grpcio: the example Python client is tested against a
# served orchestrator (gRPC clients in other languages must be able to use Continuum).
py_env="${XDG_CACHE_HOME:-$HOME/.cache}/continuum/python"
if ! "$py_env/bin/python" -c 'import grpc, grpc_tools, grpc_status' >/dev/null 2>&1; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
  fi
  echo "setup: creating $py_env with grpcio, grpcio-tools, grpcio-status" >&2
  python3 -m venv "$py_env"
  "$py_env/bin/pip" install -q --disable-pip-version-check -r "$(dirname "$0")/../examples/clients/python/requirements.txt"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
