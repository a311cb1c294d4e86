#!/usr/bin/env bash
# Rebuilds the example's firmware images from arduino-flow.c (Debian's gcc-avr
# and avr-libc): v1, and v2 with the door contact debounced.
set -euo pipefail
cd "$(dirname "$0")"
for v in 1 2; do
  flags=""
  [ "$v" = 2 ] && flags="-DDEBOUNCE"
  avr-gcc -mmcu=atmega328p -DF_CPU=16000000UL -Os $flags -o "arduino-flow-v$v.elf" arduino-flow.c
  avr-objcopy -O ihex -R .eeprom "arduino-flow-v$v.elf" "arduino-flow-v$v.hex"
  rm -f "arduino-flow-v$v.elf"
done
