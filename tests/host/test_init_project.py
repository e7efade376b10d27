"""`uplink init` and a project of the user's own: their fleet.toml, user.py and the modules it
imports, built with the firmware of the installed package (also from a wheel, outside this
repository)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from host_tools import bundle, hostboard, project
from tests.host.test_cli import subscribe
from tests.host.uplink_helpers import REPO, Env

TEMPLATE = (REPO / "host_tools" / "templates" / "fleet.toml").read_text()
HELPER = "KEY = 'helper_marker_4711'\n\n\ndef scaled(x):\n    return x * 2\n"


def new_project(root: Path) -> Env:
    """`uplink init` into root/p; an Env whose fleet file is the new one."""
    env = Env(root)
    r = env.run("init", str(root / "p"))
    assert r.code == 0, r.output
    env.root = root / "p"
    env.fleet = root / "p" / "fleet.toml"
    env.env.update(UPLINK_FLEET=str(env.fleet), UPLINK_BUILD_DIR=str(root / "p" / "build"))
    env.build = root / "p" / "build"
    return env


def add_helper(p: Path) -> None:
    """user.py imports helpers.py beside it and sends what it returns."""
    (p / "helpers.py").write_text(HELPER)
    user = (p / "user.py").read_text()
    assert "\nimport time\n" in user and "    return {\"temperature\"" in user
    user = user.replace("\nimport time\n", "\nimport time\n\nimport helpers\n")
    user = user.replace("    return {\"temperature\"", "    return {helpers.KEY: helpers.scaled(21), \"temperature\"")
    (p / "user.py").write_text(user)


def test_init_writes_a_project_that_validates_and_builds(tmp_path):
    env = new_project(tmp_path)
    p = env.root
    assert sorted(f.name for f in p.iterdir()) == [".gitignore", "fleet.toml", "user.py"]
    assert (p / "fleet.toml").read_text() == TEMPLATE
    ignored = (p / ".gitignore").read_text().split()
    assert "build/" in ignored and "fleet.secrets.toml" in ignored
    user = (p / "user.py").read_text()
    assert user.endswith((REPO / "firmware" / "user.py").read_text())  # the example to edit
    assert "def read():" in user and "def handle(cmd):" in user

    r = env.run("validate")
    assert r.code == 0, r.output
    assert r.stderr == "fleet.toml: 1 device OK: local-demo\n"
    r = env.run("build", "--json")
    assert r.code == 0, r.output
    files = {f["rel"]: f for f in json.loads(r.stdout)["host"]["files"]}
    assert files["user.mpy"]["project"] and not files["uplink/app.mpy"]["project"]
    assert files["user.mpy"]["src_bytes"] == len(user.encode())  # theirs, not the example


def test_init_refuses_to_overwrite_and_force_does(tmp_path):
    env = Env(tmp_path)
    (tmp_path / "fleet.toml").write_text("# mine\n")
    r = env.run_process("init")  # in the current directory
    assert r.code == 1
    assert r.stderr == "error: fleet.toml already exists: nothing written (pass --force to overwrite it)\n"
    assert (tmp_path / "fleet.toml").read_text() == "# mine\n" and not (tmp_path / "user.py").exists()
    (tmp_path / "user.py").write_text("# mine\n")
    r = env.run_process("init", ".")
    assert r.code == 1
    assert r.stderr == ("error: fleet.toml and user.py already exist: nothing written (pass --force "
                        "to overwrite them)\n")
    r = env.run_process("init", "--force")
    assert r.code == 0, r.output
    assert (tmp_path / "fleet.toml").read_text() == TEMPLATE and (tmp_path / ".gitignore").exists()
    (tmp_path / "notes").write_text("x")
    r = env.run_process("init", "notes")
    assert r.code == 1 and r.stderr == "error: notes is a file: give a directory for the project\n"


def _blocks(text: str) -> dict[str, str]:
    """The template's example sections, by title ('ThingsBoard', ...)."""
    parts = re.split(r"^# -- (\S+)[^\n]*\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _uncomment(block: str) -> str:
    return "".join(line[2:] if line.startswith("# ") else line[1:] if line.startswith("#") else line
                   for line in block.splitlines(keepends=True))


def test_every_example_of_the_template_validates_once_uncommented(tmp_path):
    blocks = _blocks(TEMPLATE)
    assert list(blocks) == ["live:", "ThingsBoard", "Blynk", "Weightron", "Biotz"]
    env = Env(tmp_path)
    everything = TEMPLATE
    for title, block in list(blocks.items())[1:]:
        assert f'kind = "{title.lower()}"' in re.sub(r" +", " ", _uncomment(block))
        env.write_fleet(TEMPLATE.replace(block, _uncomment(block)))
        r = env.run("validate", "--no-secrets", "--json")
        assert r.code == 0, (title, r.output)
        assert len(json.loads(r.stdout)["devices"]) == 2
        everything = everything.replace(block, _uncomment(block))
    env.write_fleet(everything)
    r = env.run("validate", "--no-secrets", "--json")
    assert r.code == 0, r.output
    assert json.loads(r.stdout)["devices"] == ["field-3", "greenhouse-1", "local-demo", "pump-1", "scale-7"]


def test_the_projects_modules_go_with_user_py_and_only_those(tmp_path):
    env = new_project(tmp_path)
    p = env.root
    add_helper(p)
    (p / "sensors").mkdir()
    (p / "sensors" / "__init__.py").write_text("from . import bme\n")
    (p / "sensors" / "bme.py").write_text("NAME = 'bme_marker_0815'\n")
    (p / "helpers.py").write_text("import sensors\n" + HELPER)
    (p / "tool.py").write_text("print('a script of theirs, imported by nothing')\n")
    env.write_fleet(TEMPLATE + '\n[devices.greenhouse-1]\nboard = "esp32-devkitc"\n'
                    '[devices.greenhouse-1.platform]\nkind = "blynk"\ntoken = "secret:t"\n')

    r = env.run("build", "--board", "esp32-devkitc", "--json")
    assert r.code == 0, r.output
    mine = {f["rel"] for f in json.loads(r.stdout)["esp32-devkitc"]["files"] if f["project"]}
    assert mine == {"user.mpy", "helpers.mpy", "sensors/__init__.mpy", "sensors/bme.mpy"}
    out = env.build / "firmware" / "esp32-devkitc"
    assert b"helper_marker_4711" in (out / "helpers.mpy").read_bytes()
    assert b"bme_marker_0815" in (out / "sensors" / "bme.mpy").read_bytes()
    assert not (out / "tool.mpy").exists()
    assert str(tmp_path).encode() not in (out / "helpers.mpy").read_bytes()  # -s: board paths only

    # a device's bundle: the user's modules and the firmware they reach, one cloud adapter
    src = project.sources(p)
    mods = bundle.device_modules(src.files, "blynk", host_board=False)
    assert {"user.py", "helpers.py", "sensors/__init__.py", "sensors/bme.py"} <= mods
    assert "uplink/platforms/blynk.py" in mods and "uplink/platforms/thingsboard.py" not in mods

    # the OTA bundle carries them too
    r = env.run("build", "--bundle", "greenhouse-1", "--version", "1.0", "--json", env={"UPLINK_SECRET_T": "x"})
    assert r.code == 0, r.output
    head = open(json.loads(r.stdout)["bundle"], "rb").readline()
    assert {"user.mpy", "helpers.mpy", "sensors/bme.mpy"} <= {f[0] for f in json.loads(head)["files"]}

    # a module gone from the imports leaves the build
    (p / "helpers.py").write_text(HELPER)
    assert env.run("build", "--board", "esp32-devkitc").code == 0
    assert not (out / "sensors" / "bme.mpy").exists() and (out / "helpers.mpy").exists()


def test_project_mistakes_name_the_file(tmp_path):
    env = new_project(tmp_path)
    p = env.root
    add_helper(p)
    (p / "helpers.py").write_text("def scaled(x:\n    return x\n")
    r = env.run("build")
    assert r.code == 6
    assert re.fullmatch(rf"error: {re.escape(str(p))}/helpers\.py:1: SyntaxError: .+\n", r.stderr), r.stderr
    (p / "helpers.py").write_text(HELPER + "import main\n")
    (p / "main.py").write_text("print('their own main')\n")
    r = env.run("build")
    assert r.code == 6
    assert r.stderr == (f"error: {p}/main.py: your project has a module 'main', as the firmware "
                        "does: on the board one would replace the other (rename yours, and its "
                        "imports)\n")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["--compiled", "--source"])
def test_sim_runs_the_projects_code(tmp_path, broker, mode):
    env = new_project(tmp_path)
    add_helper(env.root)
    text = env.fleet.read_text()
    assert 'url         = "mqtt://127.0.0.1:1883"' in text and "interval_s = 5" in text
    env.write_fleet(text.replace("mqtt://127.0.0.1:1883", broker.url("mqtt"))
                    .replace("interval_s = 5", "interval_s = 1"))
    got, c = subscribe(broker, "v1/devices/me/telemetry")
    try:
        r = env.run("-q", "sim", "local-demo", mode, "--seconds", "6")
    finally:
        c.loop_stop()
    assert r.code == 0, r.output
    assert any(b'"helper_marker_4711":42' in m for m in got), got


@pytest.mark.timeout(120)
def test_deploy_puts_the_projects_modules_on_the_board(tmp_path):
    from tests.virtual_board.launcher import VirtualBoard

    env = new_project(tmp_path)
    add_helper(env.root)
    (env.root / "tool.py").write_text("print('not imported')\n")
    vb = VirtualBoard(tmp_path / "board").start()
    try:
        r = env.run("deploy", "local-demo", "--port", vb.port, "--no-reset", "--json")
    finally:
        vb.stop()
    assert r.code == 0, r.output
    copied = {c["path"] for c in json.loads(r.stdout)["copy"]}
    assert {"user.mpy", "helpers.mpy", "uplink/app.mpy", "uplink/platforms/thingsboard.mpy"} <= copied
    assert "tool.mpy" not in copied and "uplink/platforms/blynk.mpy" not in copied
    out = env.build / "firmware" / "host"
    for name in ("user.mpy", "helpers.mpy"):
        assert (tmp_path / "board" / name).read_bytes() == (out / name).read_bytes()
    assert b"helper_marker_4711" in (tmp_path / "board" / "helpers.mpy").read_bytes()


# -- the wheel, outside this repository ---------------------------------------------------------
def _wheel(src: Path, out: Path) -> Path:
    """`pip wheel` of a copy of the repository (the build writes beside its sources).
    Offline when this interpreter's setuptools can make wheels; else pip's isolated build,
    which fetches pyproject.toml's build requirements."""
    import importlib.util

    offline = (importlib.util.find_spec("wheel") is not None
               or importlib.util.find_spec("setuptools.command.bdist_wheel") is not None)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)]
    subprocess.run(cmd + (["--no-build-isolation"] if offline else []), check=True,
                   capture_output=True, timeout=240)
    return next(out.glob("*.whl"))


class Installed:
    """The wheel of a copy of this repository, installed alone in a fresh virtualenv (its
    dependencies from this one's site-packages), and `uplink` run from it outside the repository."""

    def __init__(self, tmp_path: Path):
        self.src = src = tmp_path / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(REPO / name, src / name)
        for name in ("host_tools", "firmware", "boards", "docs", "tools/esp32-model"):
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        self.whl = _wheel(src, tmp_path / "dist")
        # a plain path to this venv's site-packages: its editable install of host_tools is not
        # loaded; added after the install, so pip never sees, let alone replaces, it
        self.venv = venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        self.site = Path(subprocess.run([venv / "bin" / "python", "-c",
                                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        check=True, capture_output=True, text=True).stdout.strip())
        subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                        "-q", "--no-deps", "--no-index", str(self.whl)], check=True, capture_output=True)
        (self.site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # the PyPI unix port's `micropython` script, which a pip install of the dependency puts here
        mpbin = tmp_path / "mpbin"
        mpbin.mkdir()
        (mpbin / "micropython").symlink_to(Path(sys.executable).parent / "micropython")
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.env = {"PATH": f"{venv / 'bin'}:{mpbin}:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
                    "UPLINK_NO_KEYRING": "1", "COLUMNS": "200"}  # no PYTHONPATH, no UPLINK_FIRMWARE_DIR

    def uplink(self, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / "uplink"), *args], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    return Installed(tmp_path_factory.mktemp("wheel"))


@pytest.mark.timeout(300)
def test_the_wheel_carries_the_firmware_and_works_outside_the_repository(installed):
    src, site, work, uplink = installed.src, installed.site, installed.work, installed.uplink
    names = set(zipfile.ZipFile(installed.whl).namelist())
    firmware = {f"host_tools/firmware/{p.relative_to(src / 'firmware').as_posix()}"
                for p in (src / "firmware").rglob("*.py")}
    assert firmware <= names, sorted(firmware - names)  # every firmware package listed in pyproject
    assert {f"host_tools/boards/{p.name}" for p in (src / "boards").glob("*.json")} <= names
    assert {"host_tools/ca/isrg-root-x1.pem", "host_tools/templates/fleet.toml",
            "host_tools/templates/gitignore"} <= names

    where = subprocess.run([installed.venv / "bin" / "python", "-c", "from host_tools import project; "
                            "print(project.firmware_dir()); print(project.shipped('boards'))"],
                           cwd=work, env=installed.env, check=True, capture_output=True, text=True).stdout.split()
    assert where == [str(site / "host_tools" / "firmware"), str(site / "host_tools" / "boards")]
    r = uplink("init", "p", cwd=work)
    assert r.returncode == 0, r.stderr
    p = work / "p"
    r = uplink("validate", cwd=p)
    assert r.returncode == 0 and r.stderr == "fleet.toml: 1 device OK: local-demo\n", r.stderr
    add_helper(p)
    r = uplink("build", "--json", cwd=p)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["host"]
    assert rep["dir"] == str(p / "build" / "firmware" / "host")
    out = p / "build" / "firmware" / "host"
    built = {f.relative_to(out).as_posix() for f in out.rglob("*") if ".cache" not in f.parts and f.is_file()}
    expected = {rel[len("host_tools/firmware/"):-3] + ".mpy" for rel in firmware} - {"boot.mpy", "main.mpy"}
    assert built == expected | {"boot.py", "main.py", "helpers.mpy"}
    assert b"helper_marker_4711" in (out / "helpers.mpy").read_bytes()
    assert b"helpers" in (out / "user.mpy").read_bytes()  # the user's, which imports it
    assert (out / "boot.py").read_bytes() == (REPO / "firmware" / "boot.py").read_bytes()
    assert not any(os.fspath(REPO).encode() in f.read_bytes() for f in out.rglob("*.mpy"))


@pytest.mark.timeout(300)
def test_what_a_pip_user_is_told_they_can_follow(installed):
    """Every message works without this repository: `uplink init` by name, the docs a message
    cites shipped with `uplink docs`, the ESP32 model in the wheel."""
    names = set(zipfile.ZipFile(installed.whl).namelist())
    assert {f"host_tools/docs/{p.name}" for p in (REPO / "docs").glob("*.md")} <= names
    assert {"host_tools/esp32_model/micropython", "host_tools/esp32_model/micropython.sha256"} <= names
    empty = installed.work / "empty"
    empty.mkdir()
    r = installed.uplink("validate", cwd=empty)
    assert r.returncode == 3, r.stderr
    assert "no fleet file here: make a project with `uplink init` (or pass --fleet PATH)" in r.stderr
    assert "docs/" not in r.stderr
    # each `uplink docs X` the messages, the help and the template cite is there
    cited = set()
    for text in (*(installed.uplink(*c, "--help", cwd=empty).stdout for c in ([], ["build"], ["ota"])),
                 (installed.site / "host_tools" / "templates" / "fleet.toml").read_text()):
        cited |= set(re.findall(r"`uplink docs ([a-z_]+)`", text))
        assert not re.search(r"\bdocs/\w+\.md", text), text
    assert {"ota", "platforms"} <= cited
    for topic in cited:
        r = installed.uplink("docs", topic, cwd=empty)
        assert r.returncode == 0 and r.stdout.startswith("# "), (topic, r.stderr)
    r = installed.uplink("docs", cwd=empty)
    assert r.returncode == 0 and "hardware" in r.stdout and "platforms" in r.stdout, r.stderr
    if hostboard.esp32_model():  # this machine runs the model: so does the pip install's sim
        model = subprocess.run([installed.venv / "bin" / "python", "-c",
                                "from host_tools import hostboard; print(hostboard.esp32_model())"],
                               cwd=empty, env=installed.env, capture_output=True, text=True).stdout.strip()
        assert model.startswith(str(installed.site / "host_tools" / "esp32_model")) or "/.cache/uplink/" in model


@pytest.mark.timeout(300)
def test_from_pip_with_no_broker_sim_shows_the_temperature_and_takes_a_command(installed):
    """The issue's "done when": a fresh virtualenv outside the repository, `uplink init`,
    `uplink sim local-demo` with no broker running, the user's temperature on the console
    within 60 s; the command the sim says to send arrives at handle()."""
    import threading

    from host_tools.local_broker import free_port

    work = installed.work / "first"
    work.mkdir()
    assert installed.uplink("init", "greenhouse", cwd=work).returncode == 0
    p = work / "greenhouse"
    fleet = p / "fleet.toml"  # 1883 may be a system broker here: a port where none runs
    fleet.write_text(fleet.read_text().replace("127.0.0.1:1883", f"127.0.0.1:{free_port()}"))
    sim = subprocess.Popen([str(installed.venv / "bin" / "uplink"), "sim", "local-demo", "--seconds", "150"],
                           cwd=p, env=installed.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    lines: list[str] = []
    seen = threading.Condition()

    def read():
        assert sim.stdout is not None
        for line in sim.stdout:
            with seen:
                lines.append(line)
                seen.notify_all()

    threading.Thread(target=read, daemon=True).start()

    def wait_for(pattern: str, timeout: float) -> str:
        with seen:
            seen.wait_for(lambda: any(re.search(pattern, ln) for ln in lines), timeout)
            return next((ln for ln in lines if re.search(pattern, ln)), "")

    try:
        assert wait_for(r"D read: .*temperature=\d", 60), "".join(lines)
        hint = wait_for(r"send it a command from another terminal: ", 1)
        assert "uplink sim local-demo --send setLed" in hint, "".join(lines)
        cmd = hint.split("another terminal: ", 1)[1].strip()
        r = subprocess.run(["bash", "-c", cmd], cwd=p, env=installed.env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and json.loads(r.stdout) == {"led": True}, r.stderr
        assert wait_for(r'D cmd: setLed \{"on":true\} -> \{"led":true\}', 30), "".join(lines)
    finally:
        sim.terminate()
        sim.wait(30)
