"""The `uplink` command: from a new board to sending data. See docs/host_tools.md.

A command raises an UplinkError (host_tools/errors.py) for what a person can act on; the
root command tells it and exits with its code (errors.ExitCode, shown by `uplink --help`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core
from rich.table import Table

from host_tools import __version__, errors
from host_tools.errors import ExitCode, UplinkError, UsageError
from host_tools.secrets import SecretError
from host_tools.state import S
from host_tools.ui import REDACT, UI, plural

# typer labels every flag `<bool>` (and -v `<int>`) in help, as if it took a value; they take none
_type_label = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = (  # type: ignore[method-assign]
    lambda self, ctx: None if self.is_flag or self.count else _type_label(self, ctx))


class _Root(typer.core.TyperGroup):
    """`uplink` itself: the one place an UplinkError from any command is told and turned into
    its exit code (main() runs this, and so does the tests' in-process runner)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UplinkError as e:
            for line in e.lines():
                UI.error(line)
            raise typer.Exit(int(e.code)) from None


app = typer.Typer(
    name="uplink",
    cls=_Root,
    help="Provision, build, deploy and flash Uplink boards from this machine.",
    epilog=errors.help_text(),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show a device's configuration.", no_args_is_help=True)
secrets_app = typer.Typer(help="Store, list and remove secrets (OS keyring, env, 0600 file).",
                          no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(secrets_app, name="secrets")


def _version(value: bool):
    if value:
        UI.text(f"uplink {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_options(
    fleet: Annotated[Path, typer.Option(
        "--fleet", "-f", help="The fleet file.", envvar="UPLINK_FLEET")] = Path("fleet.toml"),
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Say more (repeatable).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and requested data.")] = False,
    secrets_file: Annotated[Optional[Path], typer.Option(
        help="Secrets file (default ~/.config/uplink/secrets.json).", envvar="UPLINK_SECRETS_FILE")] = None,
    no_keyring: Annotated[bool, typer.Option(
        "--no-keyring", help="Do not use the OS keyring.", envvar="UPLINK_NO_KEYRING")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version.")] = False,
):
    """Global options; the exit codes are errors.ExitCode (the epilog of `uplink --help`)."""
    S.configure(fleet, secrets_file, no_keyring)
    REDACT.sources[:] = []
    REDACT.enabled = True
    UI.level = -1 if quiet else verbose


# -- init -------------------------------------------------------------------------------
@app.command()
def init(
    directory: Annotated[Path, typer.Argument(
        metavar="DIR", help="Where to make the project (made if missing).")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite the project's files if they exist.")] = False,
):
    """Make a project of your own: fleet.toml (a device for `uplink sim` and one example per
    cloud), a user.py to edit, a .gitignore."""
    from host_tools.project import init as make

    written = make(directory, force)
    UI.info("wrote " + ", ".join(str(p) for p in written))
    go = "" if directory.resolve() == Path.cwd().resolve() else f"cd {directory} && "
    UI.info(f"next: {go}uplink validate && uplink sim local-demo (with an MQTT broker on "
            "127.0.0.1:1883, e.g. mosquitto); your code goes in user.py")


# -- validate ---------------------------------------------------------------------------
@app.command()
def validate(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
    no_secrets: Annotated[bool, typer.Option(
        "--no-secrets", help="Do not check that referenced secrets are set.")] = False,
):
    """Check the fleet file (and that every secret it references is set)."""
    from host_tools.fleet import FleetError, secret_refs

    try:
        fleet = S.fleet()
    except FleetError as e:
        if as_json:
            UI.data({"ok": False, "problems": e.problems})
        raise
    from host_tools.provision import ProvisionError, ca_to_der

    bad_files = []
    for name, dev in fleet.devices.items():
        if dev.platform.ca:
            path = fleet.resolve_path(dev.platform.ca)
            try:
                ca_to_der(path.read_bytes(), str(path))
            except OSError as e:
                bad_files.append(f"{fleet.path.name}: device '{name}': platform.ca: cannot read "
                                 f"{path} ({e.strerror})")
            except ProvisionError as e:
                bad_files.append(f"{fleet.path.name}: device '{name}': platform.ca: {e}")
    if bad_files:
        if as_json:
            UI.data({"ok": False, "problems": bad_files})
        raise FleetError(bad_files)
    missing: list[dict] = []
    if not no_secrets:
        store = S.store
        for name, dev in fleet.devices.items():
            for path, sname in secret_refs(dev).items():
                if store.where(sname) is None:
                    missing.append({"device": name, "key": path, "secret": sname})
    if as_json:
        UI.data({"ok": not missing, "file": str(fleet.path), "devices": sorted(fleet.devices),
                 "missing_secrets": missing})
    else:
        for m in missing:
            UI.error(f"{fleet.path.name}: device '{m['device']}': {m['key']}: secret "
                     f"'{m['secret']}' is not set (uplink secrets set {m['secret']})")
        if not missing:
            UI.info(f"{fleet.path.name}: {plural(len(fleet.devices), 'device')} OK: "
                    + ", ".join(sorted(fleet.devices)))
    if missing:  # each told above
        raise typer.Exit(ExitCode.SECRET)


# -- config show ----------------------------------------------------------------------------
@config_app.command("show")
def config_show(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.")],
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Print secret values instead of their references.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the config.json only.")] = False,
):
    """The config.json this device gets; secrets shown as "secret:NAME" unless --show-secrets."""
    from host_tools.provision import render

    fleet = S.fleet()
    config, files = render(fleet, device, S.store, redact=not show_secrets)
    if show_secrets:
        REDACT.enabled = False
    try:
        if as_json:
            UI.data(config)
        else:
            UI.text(json.dumps(config, indent=2) + "\n")
            if not show_secrets:
                UI.info("secrets are shown as references; --show-secrets prints their values")
    finally:
        REDACT.enabled = True


# -- secrets ---------------------------------------------------------------------------------
def _read_secret_value(name: str, from_env: str | None) -> str:
    if from_env:
        v = os.environ.get(from_env)
        if v is None:
            raise SecretError(f"environment variable {from_env} is not set")
        return v
    if sys.stdin.isatty():
        return typer.prompt(f"value for {name}", hide_input=True, confirmation_prompt=True)
    v = sys.stdin.readline().rstrip("\r\n")
    if not v:
        raise SecretError(f"no value for {name} on standard input")
    return v


@secrets_app.command("set")
def secrets_set(
    name: Annotated[str, typer.Argument(help="Secret name, as in \"secret:NAME\".")],
    file: Annotated[bool, typer.Option(
        "--file", help="Store in the 0600 secrets file even if there is a keyring.")] = False,
    keyring: Annotated[bool, typer.Option("--keyring", help="Store in the OS keyring or fail.")] = False,
    from_env: Annotated[Optional[str], typer.Option(
        "--from-env", metavar="VAR", help="Take the value from this environment variable.")] = None,
):
    """Store a secret. The value is prompted for (hidden) or read from standard input, never
    taken as an argument (it would land in your shell history)."""
    value = _read_secret_value(name, from_env)
    store = S.store
    store.remember(value)
    where = store.set(name, value, backend="file" if file else "keyring" if keyring else None)
    UI.info(f"stored '{name}' in the {'OS keyring' if where == 'keyring' else str(store.file) + ' (0600)'}")


@secrets_app.command("list")
def secrets_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable list.")] = False,
):
    """Secret names (never values): where each is stored and which devices use it."""
    from host_tools.fleet import FleetError, secret_refs

    store = S.store
    used: dict[str, list[str]] = {}
    try:
        fleet = S.fleet()
        for dname, dev in fleet.devices.items():
            for path, sname in secret_refs(dev).items():
                used.setdefault(sname, []).append(f"{dname}:{path}")
    except FleetError:
        UI.detail("no usable fleet file: not showing which devices use each secret")
    names = sorted(set(store.names()) | set(used))
    rows = [{"name": n, "stored": store.where(n), "used_by": used.get(n, [])} for n in names]
    if as_json:
        UI.data({"keyring": store.keyring_available, "file": str(store.file), "secrets": rows})
        return
    t = Table("name", "stored in", "used by")
    for r in rows:
        t.add_row(r["name"], r["stored"] or "[red]missing[/red]", ", ".join(r["used_by"]))
    UI.out.print(t)
    if not store.keyring_available:
        UI.info(f"no OS keyring here ({store.keyring_problem}): secrets live in {store.file}")


@secrets_app.command("rm")
def secrets_rm(name: Annotated[str, typer.Argument(help="Secret name.")]):
    """Remove a secret from the keyring and the secrets file."""
    removed = S.store.delete(name)
    if not removed:
        raise SecretError(f"no secret '{name}' in the keyring or {S.store.file}")
    UI.info(f"removed '{name}' from {' and '.join(removed)}")


# -- provision ----------------------------------------------------------------------------------
def _do_provision(device: str, register: bool = False, out: Path | None = None):
    from host_tools.fleet import ThingsBoard
    from host_tools.provision import ProvisionError, ca_to_der, provision, registered_token_name

    fleet = S.fleet()
    dev = fleet.device(device)
    store = S.store
    if register:
        from host_tools import tb_register

        p = dev.platform
        if not isinstance(p, ThingsBoard) or not (p.provision_key and p.provision_secret):
            raise ProvisionError(f"--register needs a thingsboard device with provision_key and "
                                 f"provision_secret; '{device}' has kind {p.kind}")
        ca_pem = None
        if p.ca:
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            der = ca_to_der(fleet.resolve_path(p.ca).read_bytes(), p.ca)
            ca_pem = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode()
        key = store.resolve(p.provision_key, context=f"device '{device}': platform.provision_key")
        secret = store.resolve(p.provision_secret, context=f"device '{device}': platform.provision_secret")
        UI.info(f"registering '{device}' with ThingsBoard at {p.effective_url()}")
        token = tb_register.register(p.effective_url(), device, key, secret, ca_pem=ca_pem,
                                     insecure=p.insecure)
        store.remember(token)
        target = p.token[len("secret:"):] if p.token else registered_token_name(device)
        where = store.set(target, token)
        UI.info(f"ThingsBoard issued an access token; stored as secret '{target}' ({where})")
    return provision(fleet, device, store, out)


@app.command("provision")
def provision_cmd(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.")],
    register: Annotated[bool, typer.Option(
        "--register",
        help="ThingsBoard: provision the device now, from here, and keep its token as a secret.")] = False,
    out: Annotated[Optional[Path], typer.Option(
        help="Build directory (default: build/ next to the fleet file).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable list of files.")] = False,
):
    """Render build/devices/DEVICE/: config.json (0600), the CA as DER, the board profile."""
    b = _do_provision(device, register, out or S.build_root)
    rows = []
    for name in sorted(b.files):
        f = b.dir / name
        rows.append({"file": str(f), "bytes": f.stat().st_size, "mode": f"{f.stat().st_mode & 0o777:04o}"})
    if as_json:
        UI.data({"device": device, "dir": str(b.dir), "files": rows})
        return
    t = Table("file", "bytes", "mode")
    for r in rows:
        t.add_row(r["file"], str(r["bytes"]), r["mode"])
    if UI.level >= 0:
        UI.out.print(t)


# -- build ------------------------------------------------------------------------------------
def _boards_for_build(board: str | None) -> list[str]:
    if board:
        return [board]
    from host_tools.fleet import FleetError

    try:
        fleet = S.fleet()
    except FleetError as e:
        raise FleetError([*e.problems, "(or pass --board)"]) from None
    return sorted({d.board for d in fleet.devices.values()})


@app.command()
def build(
    board: Annotated[Optional[str], typer.Option(
        help="Board profile id (boards/*.json); default: every board in the fleet.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable size table.")] = False,
    bundle: Annotated[Optional[str], typer.Option(
        "--bundle", metavar="DEVICE", help="Write DEVICE's app as one OTA bundle (docs/ota.md).")] = None,
    version: Annotated[Optional[str], typer.Option(
        "--version", help="The bundle's version (default: the firmware's).")] = None,
):
    """mpy-cross every firmware module for the board (cached), with a size table."""
    from host_tools import build as b
    from host_tools.fleet import board_profile

    if bundle is not None:
        return _build_bundle(bundle, version, as_json)
    report = {}
    src = S.sources()
    for bid in _boards_for_build(board):
        board_profile(bid)
        root, items = b.build(bid, out=S.build_root / "firmware" / bid, src=src)
        report[bid] = {"dir": str(root), "arch": board_profile(bid).get("mpy_arch"),
                       "files": [vars(i) for i in items],
                       "total_bytes": sum(i.out_bytes for i in items)}
        if not as_json and UI.level >= 0:
            t = Table("file", "source bytes", "on board", "how",
                      title=f"{bid} ({report[bid]['arch'] or 'bytecode'}) -> {root}")
            for i in items:
                how = (("compiled" if i.compiled else "copied (runs as source)") + (", cached" if i.cached else "")
                       + (", your project" if i.project else ""))
                t.add_row(i.rel, str(i.src_bytes), str(i.out_bytes), how)
            t.add_row("[b]total[/b]", str(sum(i.src_bytes for i in items)), f"[b]{report[bid]['total_bytes']}[/b]", "")
            UI.out.print(t)
    if as_json:
        UI.data(report)


def _build_bundle(device: str, version: str | None, as_json: bool):
    from host_tools import ota_bundle as bu

    dev = S.fleet().device(device)
    version = version or _firmware_version()
    out = S.build_root / "bundles" / f"{device}-{version}.uplb"
    made = bu.build_bundle(dev.board, version, out, build_root=S.build_root, src=S.sources())
    info = {"bundle": str(made.path), "title": made.manifest["title"], "version": version,
            "board": dev.board, "size": made.size, "sha256": made.sha256, "files": len(made.manifest["files"])}
    if as_json:
        UI.data(info)
    else:
        UI.text(f"{made.path}: {made.manifest['title']} {version}, {len(made.manifest['files'])} files, "
                f"{made.size} bytes, sha256 {made.sha256}\n")


@app.command("ota")
def ota_cmd(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file (credentials = \"relay\").")],
    bundle: Annotated[Optional[Path], typer.Option(
        "--bundle", help="A bundle made by `uplink build --bundle` (default: build one now).")] = None,
    version: Annotated[Optional[str], typer.Option(
        "--version", help="The version of the bundle built now (default: the firmware's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
):
    """Offer DEVICE an OTA bundle through `uplink relay`: the device fetches it at its next boot (docs/ota.md)."""
    from host_tools import ota_bundle as bu
    from host_tools.fleet import FleetError

    fl = S.fleet()
    dev = fl.device(device)
    if not getattr(dev.platform, "relay", False):
        raise FleetError([f"{device}: `uplink ota` serves devices whose credentials = \"relay\" through "
                          "`uplink relay`; on ThingsBoard and Blynk send the bundle through the cloud's "
                          "OTA (docs/ota.md)"])
    if bundle is None:
        version = version or _firmware_version()
        made = bu.build_bundle(dev.board, version, S.build_root / "bundles" / f"{device}-{version}.uplb",
                               build_root=S.build_root)
    else:
        made = bu.read(bundle)  # the board's checks, here first
    if made.manifest.get("board") != dev.board:
        raise bu.BundleError(f"{made.path}: a bundle for board {made.manifest.get('board')!r}, "
                             f"{device} is a {dev.board!r}")
    dest = bu.offer(made, fl.state_dir, device)  # 0600 in 0700 folders: the relay serves it as is
    info = {"device": device, "bundle": str(dest), "version": made.manifest["version"], "size": made.size,
            "sha256": made.sha256}
    if as_json:
        UI.data(info)
    else:
        UI.text(f"{device}: {made.manifest['version']} ({made.size} bytes) waits at `uplink relay` "
                f"(GET /v1/ota); the device fetches it at its next boot\n")


def _firmware_version() -> str:
    import re

    from host_tools.build import firmware_dir

    m = re.search(r'VERSION = "([^"]+)"', (firmware_dir() / "uplink" / "__init__.py").read_text())
    return m.group(1) if m else "0"


# -- deploy ------------------------------------------------------------------------------------
def _do_deploy(device: str, port: str | None, dry_run: bool, reset: bool, as_json: bool = False):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from host_tools import build as b
    from host_tools import deploy as d
    from host_tools.board_link import BoardLink
    from host_tools.bundle import device_modules, select
    from host_tools.ports import pick_port
    from host_tools.provision import provision

    fleet = S.fleet()
    dev = fleet.device(device)
    bundle = provision(fleet, device, S.store, S.build_root)
    src = S.sources()
    root, _ = b.build(dev.board, out=S.build_root / "firmware" / dev.board, src=src)
    kinds = [q.kind for q in dev.platforms or [dev.platform]]  # several clouds: each adapter
    modules = device_modules(src.files, kinds, dev.profile().get("backend") == "host")
    files = d.local_files(select(b.files(root), modules), bundle.dir)
    port = port or pick_port()
    UI.detail(f"connecting to {port}")
    link = BoardLink(port)
    try:
        plan, _ = d.plan(link, files)
        if dry_run:
            if as_json:
                UI.data(dict(plan.as_dict(), dry_run=True))
            else:
                for path, n, why in plan.copy:
                    UI.text(f"would copy  {path}  ({n} bytes, {why})\n")
                for path in plan.remove:
                    UI.text(f"would remove  {path}\n")
                UI.info(f"{len(plan.copy)} to copy ({plural(plan.copy_bytes, 'byte')}), {len(plan.remove)} "
                        f"to remove, {len(plan.same)} unchanged")
            link.leave()
            return plan
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                      console=UI.err, disable=UI.level < 0 or as_json or not plan.copy,
                      transient=True) as prog:
            task = prog.add_task("deploying", total=plan.copy_bytes)

            def step(path, n):
                prog.update(task, advance=n, description=path)

            d.execute(link, files, plan, step)
        if reset:
            link.reset()
        else:
            link.leave()
    finally:
        link.close()
    if as_json:
        UI.data(dict(plan.as_dict(), dry_run=False, reset=reset))
    else:
        UI.info(f"{device}: copied {plural(len(plan.copy), 'file')} ({plural(plan.copy_bytes, 'byte')}), "
                f"removed {len(plan.remove)}, {len(plan.same)} unchanged" + ("; board reset" if reset else ""))
    return plan


@app.command()
def deploy(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.")],
    port: Annotated[Optional[str], typer.Option(
        "--port", "-p", help="Serial port (default: the one board plugged in).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="List what would change; change nothing.")] = False,
    reset: Annotated[bool, typer.Option("--reset/--no-reset", help="Reset the board afterwards.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable plan/result.")] = False,
):
    """Copy firmware + config to the board over its serial port (only files that differ)."""
    _do_deploy(device, port, dry_run, reset, as_json)


# -- flash ---------------------------------------------------------------------------------------
@app.command("flash-micropython")
def flash_micropython(
    port: Annotated[str, typer.Option("--port", "-p", help="Serial port.")],
    image: Annotated[Path, typer.Option("--image", "-i", help="MicroPython firmware .bin for the chip.")],
    board: Annotated[Optional[str], typer.Option(
        help="Board profile id (default: the fleet's, if all devices share one).")] = None,
    erase: Annotated[bool, typer.Option("--erase/--no-erase", help="Erase the whole flash first.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Print the esptool commands only.")] = False,
):
    """Erase the chip and write MicroPython at the board profile's offset (460800, then 115200 baud)."""
    from host_tools import flash as fl
    from host_tools.fleet import board_profile

    # the host board has no flash: in a mixed fleet it is not a candidate
    boards = [b for b in _boards_for_build(board) if board or board_profile(b).get("esptool_chip")]
    if not boards:
        raise fl.FlashError("the fleet has only host-board devices, which run MicroPython's unix "
                            "port (`uplink sim`): pass --board for the board you are flashing")
    if len(boards) != 1:
        raise fl.FlashError(f"the fleet has several boards ({', '.join(boards)}): pass --board")
    profile = board_profile(boards[0])
    fl.steps(profile, image)  # the host board: nothing to flash
    fl.check_image(profile, image)  # before --dry-run prints commands that would fail
    if dry_run:
        for cmd in fl.plan(profile, port, image, erase=erase):
            UI.text(" ".join(cmd) + "\n")
        return
    from host_tools.board_link import check_port

    check_port(port)
    fl.flash(profile, port, image, erase=erase, log=UI.info)
    UI.info(f"MicroPython written to {port} at {profile['flash_offset']}")


# -- devices / logs --------------------------------------------------------------------------------
@app.command()
def devices(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable list.")] = False):
    """Serial ports on this machine: port, serial number, VID:PID, product."""
    from host_tools.ports import list_ports

    ports = list_ports()
    if as_json:
        UI.data(ports)
        return
    t = Table("port", "serial number", "VID:PID", "product")
    for p in ports:
        t.add_row(p["port"], p["serial_number"] or "", p["vid_pid"] or "", p["product"] or "")
    UI.out.print(t)


@app.command()
def logs(
    device: Annotated[Optional[str], typer.Argument(
        help="Device name from the fleet file (checked; optional).")] = None,
    port: Annotated[Optional[str], typer.Option(
        "--port", "-p", help="Serial port (default: the one board plugged in).")] = None,
    baud: Annotated[int, typer.Option(help="Baud rate.")] = 115200,
    seconds: Annotated[Optional[float], typer.Option(help="Stop after this long (default: until Ctrl-C).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
):
    """Print the board's serial console until Ctrl-C (`uplink logs DEVICE`, as after `run`)."""
    from host_tools.console import writer
    from host_tools.ports import follow, pick_port

    if quiet:
        UI.level = -1
    if device is not None:
        dev = S.fleet().device(device)  # an unknown name: exit 3 with the nearest one
        if dev.board == "host" and port is None:
            raise UsageError(f"'{device}' is a host-board device: its log is `uplink sim {device}`")
    port = port or pick_port()
    UI.info(f"console of {(device + ' on ') if device else ''}{port} ({baud} baud); Ctrl-C to stop")
    try:
        follow(port, writer(UI.text, UI.level < 0), baud=baud, seconds=seconds)
    except KeyboardInterrupt:
        pass


# -- sim / run --------------------------------------------------------------------------------------
QUIET_HELP = ("Leave out the firmware's line per message and per command (pub:, cmd:): warnings "
              "and state changes only. Same as `uplink -q`.")


def _do_sim(device: str, seconds: float | None, compiled: bool, heapsize: str | None) -> None:
    from host_tools import build as b
    from host_tools import hostboard
    from host_tools import sim as simmod
    from host_tools.console import writer
    from host_tools.project import stage
    from host_tools.provision import provision, write_file

    fleet = S.fleet()
    fleet.device(device)
    bundle = provision(fleet, device, S.store, S.build_root)
    src = S.sources()  # the host board's flash: the firmware with the project's user.py
    if compiled:
        firmware = b.build("host", out=S.build_root / "firmware" / "host", src=src)[0]
    else:
        firmware = stage(src, S.build_root / "source" / "host") if src.own else src.firmware
    state = S.build_root / "sim" / device
    hostboard.prepare_state_dir(bundle.dir, state)
    cfg = json.loads((state / "config.json").read_text())
    # the compiled firmware of an ESP32 board's device runs in that chip's memory on the ESP32
    # model (-X chip: its IDF heap, which TLS and the GC heap's growth share), unless --heapsize
    chip = hostboard.model_chip(cfg["device"]["board"]) if compiled and not heapsize else None
    if cfg["device"]["board"] != "host":  # the firmware would reach for an ESP32's Wi-Fi
        UI.info(f"{device}: the host board stands in for its {cfg['device']['board']}")
        cfg["device"]["board"] = "host"
    write_file(state / "config.json", (json.dumps(cfg, indent=2) + "\n").encode(), 0o600)
    heapsize = heapsize or simmod.default_heapsize(compiled)
    UI.detail(f"interpreter {hostboard.micropython()}"
              + ("" if hostboard.esp32_model() else f" (no ESP32 model: {hostboard.esp32_model_missing()})"))
    memory = f"the {chip}'s memory" if chip else f"{heapsize} heap"
    UI.info(f"{device} on the host board ({'compiled' if compiled else 'sources'}, "
            f"{memory}; state in {state}); Ctrl-C to stop")
    problem = simmod.run(state, seconds=seconds, compiled=compiled, heapsize=heapsize,
                         write=writer(UI.text, UI.level < 0), info=UI.info, firmware=firmware, chip=chip)
    if hostboard.model_note():  # last, where it stays visible
        UI.warn(hostboard.model_note())
    if problem:
        raise UplinkError(problem)


@app.command()
def sim(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.")],
    seconds: Annotated[Optional[float], typer.Option(help="Stop after this long (default: until Ctrl-C).")] = None,
    compiled: Annotated[bool, typer.Option(
        "--compiled/--source", help="Run the mpy-cross output, as the board does, or the sources.")] = True,
    heapsize: Annotated[Optional[str], typer.Option(
        help="MicroPython heap (default on the ESP32 model: the device's board's memory, its IDF "
             "heap included, for esp32-devkitc, -c3 and -s3; else 128k, an ESP32 without PSRAM; "
             "192k with --source).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
):
    """Run the device's bundle on the host board (MicroPython unix port), against its broker."""
    if quiet:
        UI.level = -1
    _do_sim(device, seconds, compiled, heapsize)


@app.command()
def run(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.")],
    port: Annotated[Optional[str], typer.Option(
        "--port", "-p", help="Serial port (default: the one board plugged in).")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Stop following the logs after this long.")] = None,
):
    """validate -> provision -> build -> deploy -> logs (host-board devices: sim)."""
    from host_tools.console import writer
    from host_tools.ports import follow, pick_port

    fleet = S.fleet()
    dev = fleet.device(device)
    UI.info(f"{fleet.path.name}: valid")
    if dev.board == "host" and port is None:
        _do_sim(device, seconds, True, None)
        return
    port = port or pick_port()
    _do_deploy(device, port, dry_run=False, reset=True)
    time.sleep(0.3)
    UI.info(f"console of {port}; Ctrl-C to stop")
    try:
        follow(port, writer(UI.text, UI.level < 0), seconds=seconds)
    except KeyboardInterrupt:
        pass


# -- the token relay's commands (host_tools/tokens_cli.py) ---------------------------------------------
try:
    with warnings.catch_warnings():  # a library's deprecation notice is not the user's business
        try:  # authlib turns its own warnings on when imported: let it, then override
            import authlib.deprecate  # noqa: F401
        except ImportError:
            pass
        warnings.simplefilter("ignore", DeprecationWarning)
        from host_tools import tokens_cli
except ImportError:  # pragma: no cover - that part is optional
    tokens_cli = None
if tokens_cli is not None:
    tokens_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
