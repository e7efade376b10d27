#!/bin/bash
# Build the Uplink ESP32 model: MicroPython's unix port as a 32-bit (i686) binary with
# single-precision floats and the ESP32 port's 2000 epoch (see README.md).
#
# usage: MP_REPO=DIR TLS_REPO=DIR LIB_REPO=DIR tools/esp32-model/build.sh OUT_DIR
#   MP_REPO   git dir holding micropython/micropython    at $MP_COMMIT
#   TLS_REPO  git dir holding Mbed-TLS/mbedtls           at $TLS_COMMIT
#   LIB_REPO  git dir holding micropython/micropython-lib at $LIB_COMMIT
#   FREEZE    (optional) a directory holding uplink/: that firmware package frozen into the
#             binary as the ESP32 port freezes modules (a measuring model, README.md "A model
#             with the firmware frozen"; never the shipped binary, whose sha256 it changes)
# needs: gcc-multilib (apt-get install -y gcc-multilib), make, python3, git, patch.
# Writes OUT_DIR/micropython and prints its sha256. The build is byte-for-byte
# reproducible: same commits + same toolchain => same binary.
set -euo pipefail

MP_COMMIT=1c3c201149f37fe8d81246191b3127bb198d6306   # v1.29.0-preview-731-g1c3c201149
TLS_COMMIT=0bebf8b8c7f07abe3571ded48a11aa907a1ffb20  # micropython's lib/mbedtls submodule (v3.6.x)
LIB_COMMIT=ee4bb8ff139e24c42b739935fbd8ec7c4d061e02  # micropython's lib/micropython-lib submodule
# Version string baked into sys.version (what `git describe` says at MP_COMMIT; an archive has no .git).
MP_DESCRIBE=v1.29.0-preview.731.g1c3c201149
# Fixed source path, so anything that embeds a path is the same on every build.
SRC=/tmp/uplink-esp32-model-src

[ $# -eq 1 ] || { echo "usage: MP_REPO=.. TLS_REPO=.. LIB_REPO=.. $0 OUT_DIR" >&2; exit 2; }
MP=${MP_REPO:?git dir of micropython/micropython}
TLS=${TLS_REPO:?git dir of Mbed-TLS/mbedtls}
LIB=${LIB_REPO:?git dir of micropython/micropython-lib}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)

# The pinned commits must be there, and must agree with micropython's own submodule pins.
for pair in "$MP:$MP_COMMIT" "$TLS:$TLS_COMMIT" "$LIB:$LIB_COMMIT"; do
    [ "$(git -C "${pair%:*}" cat-file -t "${pair##*:}" 2>/dev/null)" = commit ] \
        || { echo "commit ${pair##*:} not found in ${pair%:*}" >&2; exit 1; }
done
[ "$(git -C "$MP" rev-parse "$MP_COMMIT:lib/mbedtls")" = "$TLS_COMMIT" ] || { echo "lib/mbedtls pin mismatch" >&2; exit 1; }
[ "$(git -C "$MP" rev-parse "$MP_COMMIT:lib/micropython-lib")" = "$LIB_COMMIT" ] || { echo "lib/micropython-lib pin mismatch" >&2; exit 1; }

# Sources: git archive (no .git, so nothing depends on the checkout's state).
rm -rf "$SRC"
mkdir -p "$SRC"
git -C "$MP" archive "$MP_COMMIT" | tar -x -C "$SRC"
mkdir -p "$SRC/lib/mbedtls" "$SRC/lib/micropython-lib"
# Of mbedTLS only library/, include/ and 3rdparty/ are built. A stored snapshot may lack the
# big generated test-data blobs, so check the needed objects are all there, and keep git
# archive's complaint about the others (exit status 0) out of the way.
TLS_DIRS="library include 3rdparty"
if git -C "$TLS" ls-tree -r "$TLS_COMMIT" $TLS_DIRS | awk '$2 == "blob" {print $3}' \
        | git -C "$TLS" cat-file --batch-check | grep -q missing; then
    echo "mbedtls objects missing in $TLS" >&2; exit 1
fi
git -C "$TLS" archive "$TLS_COMMIT" $TLS_DIRS 2>/dev/null | tar -x -C "$SRC/lib/mbedtls"
git -C "$LIB" archive "$LIB_COMMIT" | tar -x -C "$SRC/lib/micropython-lib"
(cd "$SRC" && patch -p1 --forward --quiet < "$HERE/esp32-model.patch")

# Reproducibility: the build date is the commit's date, the version string is pinned,
# locale/timezone/hash seed are fixed, and source paths are mapped to ".".
export SOURCE_DATE_EPOCH=$(git -C "$MP" log -1 --format=%ct "$MP_COMMIT")
export MICROPY_GIT_TAG=$MP_DESCRIBE MICROPY_GIT_HASH=${MP_COMMIT:0:10}
export LC_ALL=C TZ=UTC PYTHONHASHSEED=0
unset CFLAGS LDFLAGS CPPFLAGS MAKEFLAGS
JOBS=$(nproc 2>/dev/null || echo 2)

FROZEN=()
if [ -n "${FREEZE:-}" ]; then
    FREEZE=$(cd "$FREEZE" && pwd)
    [ -f "$FREEZE/uplink/__init__.py" ] || { echo "FREEZE=$FREEZE has no uplink/__init__.py" >&2; exit 1; }
    # the port's own frozen modules (asyncio, ssl, ...) as in the shipped model, then the package
    printf 'include("$(PORT_DIR)/variants/standard/manifest.py")\npackage("uplink", base_path="%s")\n' \
        "$FREEZE" > "$OUT/manifest-frozen.py"
    FROZEN=(FROZEN_MANIFEST="$OUT/manifest-frozen.py")
fi

start=$(date +%s)
make -C "$SRC/mpy-cross" -j"$JOBS" >"$OUT/build-mpy-cross.log" 2>&1 \
    || { tail -30 "$OUT/build-mpy-cross.log" >&2; exit 1; }
# Release build: -Os, no debug info, stripped by the port's Makefile (STRIP=strip).
make -C "$SRC/ports/unix" -j"$JOBS" \
    CC="gcc -m32" LDFLAGS_EXTRA=-m32 \
    MICROPY_PY_FFI=0 MICROPY_PY_BTREE=0 \
    CFLAGS_EXTRA="-DMICROPY_FLOAT_IMPL=MICROPY_FLOAT_IMPL_FLOAT -ffile-prefix-map=$SRC=." \
    BUILD=build-esp32-model "${FROZEN[@]}" >"$OUT/build-unix.log" 2>&1 \
    || { tail -30 "$OUT/build-unix.log" >&2; exit 1; }

install -m 0755 "$SRC/ports/unix/build-esp32-model/micropython" "$OUT/micropython"
(cd "$OUT" && sha256sum micropython > micropython.sha256)
echo "built $OUT/micropython in $(( $(date +%s) - start ))s"
cat "$OUT/micropython.sha256"
