#!/usr/bin/env bash
# One-shot, idempotent setup: virtualenv with pinned packages, MicroPython type stubs, mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test,relay]"
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
# firmware is proven. The project carries it (tools/esp32-model: recipe, binary, sha256); it
# needs the 32-bit C runtime, installed here when root.
MODEL=tools/esp32-model
MODEL_NOTE=""
rm -f "$VENV/bin/micropython-esp32-model"
if ! (cd "$MODEL" && sha256sum --quiet -c micropython.sha256 2>/dev/null); then
    MODEL_NOTE="$MODEL/micropython does not match micropython.sha256 (rebuild it: $MODEL/README.md)"
else
    if ! dpkg -s libc6-i386 lib32gcc-s1 >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            # libgcc_s too: pthread_cancel needs it when a process exits with a thread alive,
            # as the host board's watchdog thread does
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libc6-i386 lib32gcc-s1 >/dev/null
        fi
    fi
    install -m 0755 "$MODEL/micropython" "$VENV/bin/micropython-esp32-model"
    if ! "$VENV/bin/micropython-esp32-model" -c 'pass' 2>/dev/null; then
        rm -f "$VENV/bin/micropython-esp32-model"
        MODEL_NOTE="the ESP32 model needs the 32-bit C runtime: sudo apt-get install libc6-i386 lib32gcc-s1, then make setup"
    fi
fi
# the relay's replica tests: a real redis-server and haproxy (docs/relay.md, "Replicas on Redis")
RELAY_MISSING=""
command -v redis-server >/dev/null 2>&1 || RELAY_MISSING="redis-server"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || RELAY_MISSING="$RELAY_MISSING haproxy"
if [ -n "$RELAY_MISSING" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $RELAY_MISSING >/dev/null
        # (the system services the packages start are left alone: the tests start their own on free ports)
    else
        echo "setup: not installed and we are not root: sudo apt-get install$RELAY_MISSING" >&2
        echo "setup: the relay's replica tests will be skipped" >&2
    fi
fi
# a system broker the Debian package starts on 1883 is left alone: the tests start their own
# on free ports, and `uplink sim local-demo` uses it
if [ -n "$MODEL_NOTE" ]; then
    # the last line, where it stays visible: every firmware result below is the 64-bit port's
    echo "setup: done, WITHOUT the ESP32 model: $MODEL_NOTE; firmware runs on the 64-bit PyPI port" >&2
else
    echo "setup: done (firmware is proven on the ESP32 model: $("$VENV/bin/micropython-esp32-model" -c 'import sys; print(sys.version.split("; ")[-1])'))"
fi
