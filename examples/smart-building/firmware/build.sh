#!/usr/bin/env bash
# Builds the example's firmware images from arduino-flow.c with Debian's
# gcc-avr and avr-libc: v1, and v2 with the door contact debounced. The build
# is reproducible (same compiler, same bytes), and skipped when the images are
# newer than the source.
set -euo pipefail
cd "$(dirname "$0")"
for v in 1 2; do
  hex="arduino-flow-v$v.hex"
  [ -f "$hex" ] && [ "$hex" -nt arduino-flow.c ] && [ "$hex" -nt build.sh ] && continue
  flags=""
  [ "$v" = 2 ] && flags="-DDEBOUNCE"
  elf="$(mktemp --suffix=.elf)"
  avr-gcc -mmcu=atmega328p -DF_CPU=16000000UL -Os $flags -o "$elf" arduino-flow.c
  avr-objcopy -O ihex -R .eeprom "$elf" "$hex.new"
  rm -f "$elf"
  mv "$hex.new" "$hex"
  echo "firmware: built $hex ($(stat -c %s "$hex") bytes of Intel HEX)" >&2
done
