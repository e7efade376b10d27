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
# the Debian package starts a system broker on 1883; we start our own per test
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
echo "setup: done ($("$VENV/bin/micropython" -c 'import sys; print(sys.implementation._machine if 0 else sys.version)'))"
