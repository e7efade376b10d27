"""pytest plugin: run tests/firmware/test_*.py inside the MicroPython unix port.

Each `test_*` function becomes a pytest item, twice: `[py]` runs the firmware sources on the
64-bit PyPI unix port with its default heap; `[mpy]` runs the mpy-cross-compiled firmware on
the ESP32 model (tools/esp32-model: 32-bit, float32, 2000 epoch, ticks wrapping at
2**30) under an ESP32-sized heap (96k unless the test says `@heapsize("128k")`). One MicroPython process runs every
function of a file that shares a variant and heap size; the process reports each function
between markers, and a failure shows the MicroPython traceback.

A firmware test module may name CPython-side services it needs with `NEEDS = ("broker",)`;
their connection details reach the test as environment variables (see tests/services.py).
A long scenario says `@slow` (from mptest): it stays out of `make test-fast`.

Under pytest-xdist, `--dist loadfile` keeps a file's items on one worker, so each group
still runs in one process (pytest 9 ignores the nodeid suffix xdist's loadgroup relies on).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from host_tools.hostboard import heap_kb  # noqa: F401  (the suite's helpers read heaps with it)

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
FW_TESTS = ROOT / "tests" / "firmware"
MARK = "\x1e@@"
DEFAULT_HEAP = "96k"
FILE_TIMEOUT = float(os.environ.get("MPY_TEST_TIMEOUT", "240"))


def micropython_bin(model: bool = True) -> str:
    """The ESP32 model (where compiled firmware is proven) unless model=False or it is not
    installed; then the PyPI unix port. One choice for the whole suite: host_tools.hostboard."""
    from host_tools import hostboard

    return hostboard.micropython(model)


def pytest_terminal_summary(terminalreporter):
    # the last line, where it stays visible: which results a chip would not vouch for
    from host_tools import hostboard

    note = hostboard.model_note()
    if note:
        terminalreporter.write_line(note, yellow=True, bold=True)


def pytest_report_header(config):
    from host_tools import hostboard

    why = hostboard.esp32_model_missing()
    if why:
        return [f"firmware: [mpy] and host-board tests on the 64-bit PyPI port, "
                f"heaps x{hostboard.PYPI_PORT_HEAP_FACTOR}: "
                f"no ESP32 model ({why})"]
    return [f"firmware: [py] on the PyPI unix port, [mpy] and host-board tests on the ESP32 model "
            f"({hostboard.esp32_model()})"]


def compile_firmware(dest: Path) -> Path:
    """mpy-cross every firmware module into dest/firmware (through host_tools.build)."""
    from host_tools import build

    return build.build("host", out=dest / "firmware")[0]


def micropython_env(firmware_dir: Path, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([str(firmware_dir), str(FW_TESTS), ".frozen"])
    if extra:
        env.update(extra)
    return env


def _parse(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    needs: tuple = ()
    tests = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "NEEDS" for t in node.targets
        ):
            needs = tuple(ast.literal_eval(node.value))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
            "test_"
        ):
            heap = DEFAULT_HEAP
            slow = False
            for d in node.decorator_list:
                if (
                    isinstance(d, ast.Call)
                    and getattr(d.func, "id", getattr(d.func, "attr", "")) == "heapsize"
                ):
                    heap = ast.literal_eval(d.args[0])
                slow = slow or getattr(d, "id", getattr(d, "attr", "")) == "slow"
            tests.append((node.name, heap, node.lineno, slow))
    return needs, tests


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent):
    # firmware test files are MicroPython code: CPython must not import them
    if module_path.parent == FW_TESTS:
        return FirmwareFile.from_parent(parent, path=module_path)
    return None


class FirmwareFile(pytest.File):
    def collect(self):
        needs, tests = _parse(self.path)
        for variant in ("py", "mpy"):
            for name, heap, lineno, slow in tests:
                item = FirmwareItem.from_parent(
                    self,
                    name=f"{name}[{variant}]",
                    func=name,
                    variant=variant,
                    heap=heap,
                    needs=needs,
                    lineno=lineno,
                    # one process per variant and heap size: [py] runs them all at once
                    siblings=tests if variant == "py" else [t for t in tests if t[1] == heap],
                )
                if variant == "py":  # the sources on the 64-bit port: not in `make test-fast`
                    item.add_marker(pytest.mark.pyport)
                if slow:  # @slow (mptest): a long scenario, not in `make test-fast` either
                    item.add_marker(pytest.mark.slow)
                yield item


# Heap budgets are the ESP32's. Without the model, compiled firmware runs on the 64-bit port,
# whose pointers and GC blocks are twice as big: the same firmware needs ~1.4x the heap there
# (measured: whole firmware 112k vs 80k over TCP, 128k vs 96k over WSS).
def port_heap(heap: str) -> str:
    """The -X heapsize to give the interpreter that runs compiled firmware for an ESP32 budget."""
    from host_tools import hostboard

    return hostboard.budget_heap(heap)


def run_mptest(path: Path, names: list, *, fw: Path, heap: str | None, extra: dict | None = None):
    """Run test functions of one firmware test file in one micropython process: compiled
    firmware (heap given) on the ESP32 model, sources (heap None) on the PyPI port.
    Returns (stdout, stderr, exit code or None, note)."""
    args = [micropython_bin(model=heap is not None)]
    if heap:
        args += ["-X", f"heapsize={port_heap(heap)}"]
    args += [str(FW_TESTS / "mptest.py"), path.stem, *names]
    try:
        res = subprocess.run(
            args,
            env=micropython_env(fw, extra),
            capture_output=True,
            timeout=FILE_TIMEOUT,
            # a scratch working directory: the firmware's filesystem root in tests
            cwd=tempfile.mkdtemp(prefix="uplink-fwtest-"),
        )
        out, rc, note = res.stdout.decode(errors="replace"), res.returncode, ""
        err = res.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        err = (e.stderr or b"").decode(errors="replace")
        rc, note = None, f"timed out after {FILE_TIMEOUT:.0f}s"
    if os.environ.get("MPY_TEST_DEBUG"):
        print(args, repr(out), repr(err))
    return out, err, rc, note


class FirmwareFailure(Exception):
    pass


class FirmwareItem(pytest.Item):
    def __init__(self, *, func, variant, heap, needs, lineno, siblings, **kw):
        super().__init__(**kw)
        self.func = func
        self.variant = variant
        self.heap = heap
        self.needs = needs
        self.lineno = lineno
        self.siblings = siblings

    def _group_key(self):
        return (str(self.path), self.variant, self.heap if self.variant == "mpy" else None)

    def _run_group(self):
        cache = self.config.stash.setdefault(_results_key, {})
        key = self._group_key()
        if key in cache:
            return cache[key]
        from tests import services

        extra = {}
        for need in self.needs:
            extra.update(services.get(need, self.config).env())
        names = [t[0] for t in self.siblings]
        if self.variant == "mpy":
            fw = self.config.stash.get(_mpy_key, None)
            if fw is None:
                fw = compile_firmware(Path(tempfile.mkdtemp(prefix="uplink-mpy-")))
                self.config.stash[_mpy_key] = fw
            out, err, rc, note = run_mptest(self.path, names, fw=fw, heap=self.heap, extra=extra)
        else:
            out, err, rc, note = run_mptest(self.path, names, fw=FIRMWARE, heap=None, extra=extra)
        cache[key] = _split(out, err, rc, note)
        return cache[key]

    def runtest(self):
        results = self._run_group()
        status, text = results.get(self.func, ("MISSING", results.get("__tail__", ("", ""))[1]))
        if status != "PASS":
            raise FirmwareFailure(f"{status}\n{text}")
        if text.strip():
            sys.stdout.write(text)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, FirmwareFailure):
            return (f"MicroPython [{self.variant}, heap {self.heap if self.variant == 'mpy' else 'default'}]:\n"
                    f"{excinfo.value}")
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, self.lineno - 1, f"{self.path.name}::{self.name}"


_results_key = pytest.StashKey[dict]()
_mpy_key = pytest.StashKey[Path]()


def _split(out: str, err: str, rc, note: str) -> dict:
    """Cut the process output into per-test (status, text) by the runner's markers."""
    results: dict = {}
    current, buf = None, []
    # not splitlines(): it also splits on \x1e, which the marker starts with
    for line in out.split("\n"):
        line += "\n"
        if line.startswith(MARK):
            word, _, name = line[len(MARK) :].strip().partition(" ")
            if word == "START":
                current, buf = name, []
            elif word == "PASS":
                results[name] = ("PASS", "".join(buf))
                current = None
            elif word == "END":
                results[name] = ("FAIL", "".join(buf))
                current = None
            continue
        buf.append(line)
    if current is not None:  # the process died inside a test
        why = note or f"micropython exited with code {rc}"
        results[current] = ("CRASH", "".join(buf) + err + f"\n[{why}]")
    results["__tail__"] = ("", err + (f"\n[{note}]" if note else f"\n[exit code {rc}]"))
    return results
