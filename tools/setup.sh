#!/usr/bin/env bash
# One-shot, idempotent setup: virtualenv with pinned packages, MicroPython type stubs, mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"
# Stubs of the ESP32 port: the type check refuses APIs the board does not have.
"$VENV/bin/python" -m pip install -q --upgrade --target "$VENV/mpstubs" --no-deps \
    micropython-esp32-stubs==1.29.0.post1 micropython-stdlib-stubs==1.29.0.post2
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    else
        echo "setup: mosquitto is not installed and we are not root: run 'sudo apt-get install mosquitto'" >&2
        echo "setup: tests that need a broker will be skipped; make demo falls back to amqtt" >&2
    fi
fi
# The ESP32 model (32-bit, float32, 2000 epoch, ticks wrapping at 2**30): where compiled
# firmware is proven. It ships beside the repo in ../shared/esp32-model (ESP32_MODEL_DIR
# overrides); without it the suite says so once and runs on the PyPI port.
MODEL_DIR=${ESP32_MODEL_DIR:-../shared/esp32-model}
if [ -f "$MODEL_DIR/micropython" ]; then
    if [ -f "$MODEL_DIR/micropython.sha256" ] && \
       ! (cd "$MODEL_DIR" && sha256sum --quiet -c micropython.sha256); then
        echo "setup: $MODEL_DIR/micropython does not match its micropython.sha256: not installed" >&2
    else
        if [ "$(id -u)" = 0 ] && ! dpkg -s libc6-i386 lib32gcc-s1 >/dev/null 2>&1; then
            # the model is an i686 binary: it needs the 32-bit C library, and libgcc_s for
            # pthread_cancel (exiting with a thread alive, as the host board's watchdog is,
            # aborts without it)
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libc6-i386 lib32gcc-s1 >/dev/null
        fi
        install -m 0755 "$MODEL_DIR/micropython" "$VENV/bin/micropython-esp32-model"
        if ! "$VENV/bin/micropython-esp32-model" -c 'pass' 2>/dev/null; then
            echo "setup: the ESP32 model does not run here: install the 32-bit C libraries" \
                 "('sudo apt-get install libc6-i386 lib32gcc-s1')" >&2
        fi
    fi
else
    echo "setup: no ESP32 model at $MODEL_DIR: compiled firmware will be tested on the 64-bit PyPI port" >&2
fi
# the Debian package starts a system broker on 1883; we start our own per test
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
echo "setup: done ($("$VENV/bin/micropython" -c 'import sys; print(sys.implementation._machine if 0 else sys.version)'))"
