"""The host board: the firmware running in the MicroPython unix port on this PC.

A state directory plays the board's filesystem: it holds config.json, the CA files and the
outbox, and is the firmware's working directory. The firmware itself is imported from
firmware/ (or its mpy-cross output), just as the ESP32 imports it from flash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from host_tools.child import die_with_parent
from host_tools.project import shipped

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = shipped("firmware")
RESET_EXIT_CODE = 75  # board.reset() on the host board exits with this: "restart me"
WATCHDOG_EXIT_CODE = -9  # the host board's watchdog bit (SIGKILL, firmware/uplink/board_host.py)


def restarts(code: int | None) -> bool:
    """A host-board exit after which the chip would boot again: reset() or a watchdog bite."""
    return code in (RESET_EXIT_CODE, WATCHDOG_EXIT_CODE)


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def micropython(model: bool = True) -> str:
    """The interpreter that runs firmware as the chip would: the ESP32 model where it is
    installed (`model=False`, or none installed: the 64-bit PyPI unix port)."""
    return (model and esp32_model()) or _bin("micropython")


_model: list = []  # [path or None, why not], found once per process
# exit with a thread alive, as the host board's watchdog thread is: the i686 build needs the
# 32-bit libgcc_s for pthread_cancel then, or it aborts
_PROBE = "import _thread, time\n_thread.start_new_thread(time.sleep, (1,))\ntime.sleep_ms(20)"


def esp32_model() -> str | None:
    """The ESP32 model (tools/esp32-model, installed by `make setup` as
    micropython-esp32-model): 32-bit, float32, 2000 epoch, ticks wrapping at 2**30.
    UPLINK_ESP32_MODEL names another binary, or `off` to use the PyPI port."""
    if not _model:
        want = os.environ.get("UPLINK_ESP32_MODEL", "")
        exe = want or str(Path(sys.executable).parent / "micropython-esp32-model")
        if not want and not os.path.exists(exe):
            exe = _packaged_model() or exe
        why = ""
        if want.lower() in ("off", "0", "no"):
            exe, why = None, "UPLINK_ESP32_MODEL=off"
        elif not os.path.exists(exe):
            exe, why = None, (f"{exe} not found (a checkout's `make setup` installs it from "
                              "tools/esp32-model; `pip install` carries it in host_tools/esp32_model)")
        elif subprocess.run([exe, "-c", _PROBE], capture_output=True).returncode != 0:
            exe, why = None, (f"{exe} does not run, or aborts at exit with a thread alive (the 32-bit "
                              "C libraries: apt-get install libc6-i386 lib32gcc-s1)")
        _model[:] = [exe, why]
    return _model[0]


def _packaged_model() -> str | None:
    """The model a wheel carries (host_tools/esp32_model), checked against its sha256; copied
    to ~/.cache/uplink with its executable bit when the install dropped it."""
    import hashlib

    from host_tools.project import PACKAGE

    exe = PACKAGE / "esp32_model" / "micropython"
    try:
        data = exe.read_bytes()
        want = (exe.parent / "micropython.sha256").read_text().split()[0]
    except (OSError, IndexError):
        return None
    digest = hashlib.sha256(data).hexdigest()
    if digest != want:
        return None
    if os.access(exe, os.X_OK):
        return str(exe)
    cached = Path.home() / ".cache" / "uplink" / f"micropython-esp32-model-{digest[:12]}"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o755)
        tmp.replace(cached)
    return str(cached)


def esp32_model_missing() -> str:
    """Why the ESP32 model is not used ('' when it is)."""
    esp32_model()
    return _model[1]


# 64-bit objects and 32-byte GC blocks: what fits an ESP32's heap on the model needs about
# this much more on the PyPI port (make bench BENCH_ARGS=firmware prints both)
PYPI_PORT_HEAP_FACTOR = 1.5


def heap_kb(heap: str) -> int:
    """'96k' -> 96, '1M' -> 1024, '65536' -> 64 (as -X heapsize reads them)."""
    n = heap.rstrip("kKmM")
    unit = heap[len(n):].lower()
    return int(n) * 1024 if unit == "m" else int(n) if unit else int(n) // 1024


def budget_heap(heap: str) -> str:
    """The -X heapsize that holds firmware to an ESP32 budget of `heap` ('128k') on the
    interpreter in use: the budget on the ESP32 model, 1.5x on the 64-bit PyPI port. One rule
    for the demo, `uplink sim` and the tests."""
    if esp32_model():
        return heap
    return f"{int(heap_kb(heap) * PYPI_PORT_HEAP_FACTOR)}k"


def model_chip(board_id: str) -> str | None:
    """The ESP32 model's `-X chip` for a board of boards/ (its esptool chip: esp32, esp32c3,
    esp32s3): that chip's IDF heap, which the GC heap grows into and mbedTLS allocates from
    (tools/esp32-model/README.md). None for the host board, an unknown one, or without the model."""
    from host_tools.fleet import BOARDS_DIR

    path = BOARDS_DIR / f"{board_id}.json"
    if not esp32_model() or not path.exists():
        return None
    return json.loads(path.read_text()).get("esptool_chip")


def model_note() -> str:
    """One line to end a command's output with when the firmware did not run on the ESP32
    model ('' when it did): results there say nothing of 32-bit ticks, float32 or the epoch."""
    why = esp32_model_missing()
    return f"note: the firmware ran on the 64-bit PyPI port, not the ESP32 model: {why}" if why else ""


def compile_firmware(out: Path) -> Path:
    """The firmware as the host board's flash holds it: .mpy modules, boot.py/main.py as
    source (host_tools.build does the compiling and caching)."""
    from host_tools import build

    return build.build("host", out=out)[0]


def prepare_state_dir(bundle_dir: Path, state_dir: Path) -> Path:
    """Copy a provisioned bundle (config.json, CA files) into the host board's filesystem."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(bundle_dir).iterdir()):
        if f.is_file():
            shutil.copy2(f, state_dir / f.name)
    return state_dir


def firmware_env(firmware_dir: Path, env: dict | None = None) -> dict:
    e = dict(os.environ)
    e["MICROPYPATH"] = os.pathsep.join([str(firmware_dir), ".frozen"])
    e.update(env or {})
    return e


# A board whose MicroPython image has a ROMFS partition (docs/hardware.md, "Firmware in
# ROMFS") holds the firmware's uplink/ package there: its bytecode runs from flash. 256 KB, as
# the partition table there has it.
ROMFS_PARTITION = 0x40000


def firmware_dir(compiled: bool) -> Path:
    """This checkout's firmware, as the host board's flash holds it: compiled, or the sources."""
    return compile_firmware(ROOT / "build" / "host-mpy") if compiled else FIRMWARE


def romfs_image(fw: Path) -> bytes:
    """The firmware's uplink/ package as the ROMFS image `uplink deploy` writes to a board."""
    from host_tools import romfs_deploy

    pkg = fw / romfs_deploy.PACKAGE
    return romfs_deploy.image({p.relative_to(fw).as_posix(): p.read_bytes() for p in sorted(pkg.rglob("*"))
                               if p.is_file() and p.suffix in (".mpy", ".py")})


def romfs_flash(fw: Path, part: Path) -> Path:
    """The host board's flash for a board with ROMFS, written once before it boots (as a deploy
    would): the partition file `part` (erased, then the image of fw's uplink/ package), and a
    directory with the rest of fw (main.py, boot.py, the example user.py): what deploy leaves
    on the filesystem. Returns that directory, the `firmware` to start the board with."""

    image = romfs_image(fw)
    if len(image) > ROMFS_PARTITION:
        raise ValueError(f"the firmware's ROMFS image is {len(image)} bytes, more than the "
                         f"{ROMFS_PARTITION}-byte partition")
    part.write_bytes(image + b"\xff" * (ROMFS_PARTITION - len(image)))
    return without_package(fw, part.with_name(part.name + ".fs"))


def without_package(fw: Path, dest: Path) -> Path:
    """dest: a copy of fw without its uplink/ package, what deploy leaves on the filesystem of
    a board whose package lives elsewhere (ROMFS, or frozen into the image)."""
    from host_tools import romfs_deploy

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(fw, dest, ignore=lambda d, names: [romfs_deploy.PACKAGE] if Path(d) == fw else [])
    return dest


def command(state_dir: Path, *, compiled: bool = False, heapsize: str | None = None,
            firmware: Path | None = None, chip: str | None = None,
            romfs: Path | None = None) -> tuple[list[str], Path]:
    """`firmware`: the host board's flash, built or staged (`uplink sim` builds the user's
    project into it); else this checkout's firmware, compiled or not. `chip` (model_chip()):
    that chip's memory on the ESP32 model, in place of a fixed `heapsize`. `romfs`: the ROMFS
    partition file (the model's -X romfs) that romfs_flash wrote, `firmware` the rest."""
    fw = firmware or firmware_dir(compiled)
    args = [micropython()]
    if chip:
        args += ["-X", f"chip={chip}"]
    elif heapsize:
        args += ["-X", f"heapsize={heapsize}"]
    if romfs:
        args += ["-X", f"romfs={romfs}"]
    # `-m main` puts the working directory (the board's filesystem) first on sys.path, as on
    # a board: a user.py placed in the state directory wins over the firmware's example.
    return [*args, "-m", "main"], fw


def start(state_dir: Path, *, compiled: bool = False, heapsize: str | None = None, env: dict | None = None,
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, firmware: Path | None = None,
          pass_fds: tuple[int, ...] = (), tied: bool = False, chip: str | None = None,
          romfs: Path | None = None) -> subprocess.Popen:
    """Boot the firmware on the host board with `state_dir` as its filesystem. `tied`: it dies
    with the thread that starts it (host_tools/child.py; `uplink sim`, the demo): an orphan
    would go on as the same client with the same state directory, and fight the next run for
    both. `pass_fds`: the sim's state-directory lock, held while either lives. `chip`: the
    ESP32 model's chip mode (-X chip), the board's memory."""
    args, fw = command(state_dir, compiled=compiled, heapsize=heapsize, firmware=firmware, chip=chip, romfs=romfs)
    return subprocess.Popen(args, cwd=state_dir, env=firmware_env(fw, env), stdout=stdout, stderr=stderr,
                            preexec_fn=die_with_parent() if tied else None, pass_fds=pass_fds)
