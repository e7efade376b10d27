"""The `uplink` command: from a new board to sending data. See docs/host_tools.md.

A command raises an UplinkError (host_tools/errors.py) for what a person can act on; the
root command tells it and exits with its code (errors.ExitCode, shown by `uplink --help`).
"""

from __future__ import annotations

import json
import os
import shlex
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

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _globals_first(self, ctx, list(args)))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UplinkError as e:
            for line in e.lines():
                UI.error(line)
            raise typer.Exit(int(e.code)) from None


def _opts(cmd) -> dict[str, bool]:
    """A command's option names -> whether each takes a value."""
    out = {}
    for p in cmd.params:
        if p.param_type_name == "option":
            for name in [*p.opts, *p.secondary_opts]:
                out[name] = not (p.is_flag or p.count)
    return out


def _globals_first(root, ctx, args: list[str]) -> list[str]:
    """`uplink validate -f x` as `uplink -f x validate`: a global option after the command moves
    in front of it, unless that command has an option of the same name (`sim -q`)."""
    glob = _opts(root)
    cmd, i, first = root, 0, None
    while i < len(args):  # the root's options and the command's names (`secrets set`)
        a = args[i]
        if a == "--":
            return args
        if a.startswith("-"):
            takes = _opts(cmd).get(a) and "=" not in a
            i += 2 if takes else 1
            continue
        sub = cmd.get_command(ctx, a) if isinstance(cmd, typer.core.TyperGroup) else None
        if sub is None:
            break
        first = i if first is None else first
        cmd, i = sub, i + 1
        if not isinstance(cmd, typer.core.TyperGroup):
            break
    if first is None:
        return args
    own = _opts(cmd)
    moved, rest = [], args[:i]
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        name = a.split("=", 1)[0] if a.startswith("--") else a
        key = name if name in glob else a[:2]  # -vv, -fPATH: the short option's letter
        n = 2 if glob.get(key) and key == a else 1  # `-f PATH`, not `-fPATH` or `--fleet=PATH`
        short = a[1:2] != "-" and key not in own
        if name not in own and (name in glob or (short and key in glob)):
            if i + n > len(args):  # `-f` with no value: click says so where it stands
                rest.append(a)
                break
            moved += args[i:i + n]
        else:
            n = 2 if own.get(name) and "=" not in a else 1
            rest += args[i:i + n]
        i += n
    return rest[:first] + moved + rest[first:] if moved else args


app = typer.Typer(
    name="uplink",
    cls=_Root,
    help="Provision, build, deploy and flash Uplink boards from this machine.",
    epilog=errors.help_text(),
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion: bash, zsh, fish, PowerShell
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show a device's configuration.", no_args_is_help=True)
secrets_app = typer.Typer(help="Store, list and remove secrets (OS keyring, env, 0600 file).",
                          no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(secrets_app, name="secrets")


def _device_names(incomplete: str) -> list[str]:
    """Shell completion of a DEVICE: the fleet's names (UPLINK_FLEET or ./fleet.toml)."""
    try:
        from host_tools.fleet import load_fleet

        names = load_fleet(Path(os.environ.get("UPLINK_FLEET", "fleet.toml"))).devices
    except Exception:  # completing must never print a traceback into the shell
        return []
    return sorted(n for n in names if n.startswith(incomplete))


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
    UI.info(f"next: {go}uplink validate && uplink sim local-demo (it starts an MQTT broker on "
            "127.0.0.1:1883 when none runs there); your code goes in user.py")


# -- docs -----------------------------------------------------------------------------------
@app.command()
def docs(
    topic: Annotated[Optional[str], typer.Argument(
        help="A document: host_tools, platforms, config, hardware, ota, ... (none: the list).")] = None,
):
    """The documentation that comes with uplink (what messages cite as `uplink docs TOPIC`)."""
    from host_tools import docs_cmd

    if topic is None:
        t = Table("topic", "what")
        for name, path in docs_cmd.topics().items():
            t.add_row(name, docs_cmd.title(path))
        UI.out.print(t)
        UI.info(f"read one: uplink docs TOPIC (the files: {docs_cmd.shipped('docs')})")
        return
    path = docs_cmd.find(topic)
    if sys.stdout.isatty():
        from rich.markdown import Markdown

        with UI.out.pager(styles=True):
            UI.out.print(Markdown(path.read_text()))
    else:
        UI.text(path.read_text())


# -- clean ----------------------------------------------------------------------------------
BUILD_PARTS = ("devices", "firmware", "source", "sim", "bundles", "host-mpy")  # what uplink writes in build/


@app.command()
def clean(
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Say what would go; remove nothing.")] = False,
):
    """Remove the build directory: rendered configs (with secrets), compiled firmware, the
    sims' state. Everything in it is made again by the next build, deploy or sim."""
    import shutil

    from host_tools import sim as simmod

    root = S.build_root
    if not root.exists():
        UI.info(f"nothing to clean: {root} does not exist")
        return
    strange = sorted(p.name for p in root.iterdir() if p.name not in BUILD_PARTS)
    if strange:  # UPLINK_BUILD_DIR may name a folder that holds more than ours
        raise UsageError(f"{root} holds what uplink did not write ({', '.join(strange)}): "
                         "not removing it; remove it yourself if it is yours to lose")
    for state in sorted((root / "sim").glob("*")):
        if (state / simmod.LOCK).exists():
            os.close(simmod.lock_state(state, state.name))  # SimBusy while one runs
    files = sum(1 for p in root.rglob("*") if p.is_file())
    if dry_run:
        UI.info(f"would remove {root} ({plural(files, 'file')})")
        return
    shutil.rmtree(root)
    UI.info(f"removed {root} ({plural(files, 'file')}: rendered configs with secrets, compiled firmware, sim state)")


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
    from host_tools.provision import ProvisionError, ca_to_der, client_cert_problems

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
        bad_files += client_cert_problems(fleet, dev, S.store)
    if bad_files:
        if as_json:
            UI.data({"ok": False, "problems": bad_files})
        raise FleetError(bad_files)
    from host_tools.fleet import memory_warnings

    warnings = [w for dev in fleet.devices.values() for w in memory_warnings(dev)]
    missing: list[dict] = []
    if not no_secrets:
        store = S.store
        for name, dev in fleet.devices.items():
            for path, sname in secret_refs(dev).items():
                if store.where(sname) is None:
                    missing.append({"device": name, "key": path, "secret": sname})
    if as_json:
        UI.data({"ok": not missing, "file": str(fleet.path), "devices": sorted(fleet.devices),
                 "missing_secrets": missing, "warnings": warnings})
    else:
        for w in warnings:
            UI.warn(f"{fleet.path.name}: {w}")
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
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.", autocompletion=_device_names)],
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
    UI.info(f"stored '{name}' in {'the OS keyring' if where == 'keyring' else str(store.file) + ' (0600)'}")


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
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.", autocompletion=_device_names)],
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
        "--bundle", metavar="DEVICE", help="Write DEVICE's app as one OTA bundle (`uplink docs ota`).")] = None,
    version: Annotated[Optional[str], typer.Option(
        "--version", help="The bundle's version (default: the firmware's + the content's sha256, "
                          "e.g. 0.1.0+3f9c2a1b).")] = None,
    freeze: Annotated[Optional[Path], typer.Option(
        "--freeze", metavar="DIR", help="Write the uplink/ package and a manifest to freeze it into a "
                                        "MicroPython image (device.frozen; `uplink docs hardware`).")] = None,
):
    """mpy-cross every firmware module for the board (cached), with a size table."""
    from host_tools import build as b
    from host_tools.fleet import board_profile

    if bundle is not None:
        return _build_bundle(bundle, version, as_json)
    if freeze is not None:
        return _build_freeze(freeze, as_json)
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


def _build_freeze(out: Path, as_json: bool):
    from host_tools import freeze as fz

    pkg = fz.package(S.sources().files)
    out.mkdir(parents=True, exist_ok=True)
    bid = fz.write(out, pkg)
    manifest = out.resolve() / "manifest.py"
    if as_json:
        UI.data({"manifest": str(manifest), "build": bid, "files": len(pkg) + 1})
        return
    UI.text(f"{manifest}: freezes uplink/ ({len(pkg)} modules), build {bid[:12]}\n")
    UI.info(f"then, in MicroPython's ports/esp32: make BOARD=ESP32_GENERIC FROZEN_MANIFEST={manifest} "
            "(your board's BOARD=), and `uplink flash-micropython "
            "--image build-ESP32_GENERIC/firmware.bin`; deploy checks the board runs this build")


def _build_bundle(device: str, version: str | None, as_json: bool):
    from host_tools import ota_bundle as bu

    dev = S.fleet().device(device)
    version = _bundle_version(version)
    made = bu.build_bundle(dev.board, version, lambda v: S.build_root / "bundles" / f"{device}-{v}.uplb",
                           build_root=S.build_root, src=S.sources())
    version = made.manifest["version"]
    info = {"bundle": str(made.path), "title": made.manifest["title"], "version": version,
            "board": dev.board, "size": made.size, "sha256": made.sha256, "files": len(made.manifest["files"])}
    if as_json:
        UI.data(info)
    else:
        UI.text(f"{made.path}: {made.manifest['title']} {version}, {len(made.manifest['files'])} files, "
                f"{made.size} bytes, sha256 {made.sha256}\n")
    if dev.frozen:  # the slot's uplink/ comes first on sys.path (firmware/main.py)
        UI.warn(f"{device} runs the firmware frozen into its image (device.frozen): after this update it runs "
                "from the OTA slot on its filesystem, with the bytecode in its heap, until its image is built "
                "again from `uplink build --freeze` and flashed (`uplink docs hardware`)")
    if dev.romfs:  # the slot's uplink/ comes first on sys.path (firmware/main.py)
        UI.warn(f"{device} runs its firmware from ROMFS (device.romfs): during its trial this update runs from "
                "the OTA slot on its filesystem, with the bytecode in its heap; once kept, the board writes it "
                "into its ROMFS partition and resets (`uplink docs ota`)")


@app.command("ota")
def ota_cmd(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file (credentials = \"relay\").",
                                                     autocompletion=_device_names)],
    bundle: Annotated[Optional[Path], typer.Option(
        "--bundle", help="A bundle made by `uplink build --bundle` (default: build one now).")] = None,
    version: Annotated[Optional[str], typer.Option(
        "--version", help="The version of the bundle built now (default: the firmware's + the "
                          "content's sha256).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
):
    """Offer DEVICE an OTA bundle through `uplink relay`: the device fetches it at its next boot
    (`uplink docs ota`)."""
    from host_tools import ota_bundle as bu
    from host_tools.fleet import FleetError

    fl = S.fleet()
    dev = fl.device(device)
    if not getattr(dev.platform, "relay", False):
        raise FleetError([f"{device}: `uplink ota` serves devices whose credentials = \"relay\" through "
                          "`uplink relay`; on ThingsBoard and Blynk send the bundle through the cloud's "
                          "OTA (`uplink docs ota`)"])
    if bundle is None:
        made = bu.build_bundle(dev.board, _bundle_version(version),
                               lambda v: S.build_root / "bundles" / f"{device}-{v}.uplb", build_root=S.build_root)
    else:
        made = bu.read(bundle)  # the board's checks, here first
    last = bu.offered(fl.state_dir, device)
    if last is None or last.sha256 != made.sha256:  # offering the same bundle again is fine
        bu.refuse_running(made.manifest["version"], _firmware_version(), last)
    if made.manifest.get("board") != dev.board:
        raise bu.BundleError(f"{made.path}: a bundle for board {made.manifest.get('board')!r}, "
                             f"{device} is a {dev.board!r}")
    dest = bu.offer(made, fl.state_dir, device)  # 0600 in 0700 folders: the relay serves it as is
    if fl.relay is not None and fl.relay.redis and tokens_cli is not None:
        import asyncio

        from host_tools.relay_state import StoreDown

        try:  # replicas on Redis take the offer from there, the bundle from the shared storage
            asyncio.run(tokens_cli.publish_offer(fl, S.store, device, bu.offer_json(made)))
        except StoreDown:
            raise bu.BundleError(f"{device}: the bundle is in {dest.parent}, but Redis ({fl.relay.redis}) "
                                 "did not answer, so the relay replicas do not offer it yet: run "
                                 "`uplink ota` again when Redis is up") from None
    info = {"device": device, "bundle": str(dest), "version": made.manifest["version"], "size": made.size,
            "sha256": made.sha256}
    if as_json:
        UI.data(info)
    else:
        UI.text(f"{device}: {made.manifest['version']} ({made.size} bytes) waits at `uplink relay` "
                f"(GET /v1/ota); the device fetches it at its next boot\n")


def _bundle_version(version: str | None) -> str:
    """The version to build a bundle as: the given one, unless a board may run it already, or
    the firmware's with the content's sha256 to come (ota_bundle.make)."""
    from host_tools import ota_bundle as bu

    if version is None:
        return _firmware_version() + "+"
    bu.refuse_running(version, _firmware_version())
    return version


def _firmware_version() -> str:
    import re

    from host_tools.build import firmware_dir

    m = re.search(r'VERSION = "([^"]+)"', (firmware_dir() / "uplink" / "__init__.py").read_text())
    return m.group(1) if m else "0"


# -- deploy ------------------------------------------------------------------------------------
def _do_deploy(device: str, port: str | None, dry_run: bool, reset: bool, as_json: bool = False):
    from host_tools import build as b
    from host_tools import deploy as d
    from host_tools.bundle import device_modules, select
    from host_tools.fleet import memory_warnings
    from host_tools.port_share import borrowed
    from host_tools.ports import pick_port
    from host_tools.provision import provision

    fleet = S.fleet()
    dev = fleet.device(device)
    for w in memory_warnings(dev):  # (`run` deploys through here too: said where the board goes)
        UI.warn(w)
    bundle = provision(fleet, device, S.store, S.build_root)
    src = S.sources()
    root, _ = b.build(dev.board, out=S.build_root / "firmware" / dev.board, src=src)
    kinds = [q.kind for q in dev.platforms or [dev.platform]]  # several clouds: each adapter
    modules = device_modules(src.files, kinds, dev.profile().get("backend") == "host")
    files = d.local_files(select(b.files(root), modules), bundle.dir)
    frozen = None
    if dev.frozen:  # what the board's image must have frozen: this build's package
        from host_tools import freeze

        frozen = freeze.package(src.files)
    port = port or pick_port()
    with borrowed(port, "uplink deploy"):
        return _deploy_to(port, device, dev, files, dry_run, reset, as_json, frozen)


def _deploy_to(port: str, device: str, dev, files: dict[str, bytes], dry_run: bool, reset: bool, as_json: bool,
               frozen: dict[str, bytes] | None = None):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from host_tools import deploy as d
    from host_tools import freeze, romfs_deploy
    from host_tools.board_link import BoardLink

    rom, rom_files = None, {}
    if dev.romfs or dev.frozen:  # the uplink/ package is not the filesystem's: none there to shadow it
        rom_files, files = romfs_deploy.split(files)
    if dev.romfs:  # it goes to the ROMFS partition
        rom = romfs_deploy.image(rom_files)
    UI.detail(f"connecting to {port}")
    link = BoardLink(port)
    try:
        if frozen is not None:  # it is in the board's image
            freeze.check(link, frozen)
        d.check_micropython(link, dev.profile(), {**files, **rom_files})
        plan, _ = d.plan(link, files, rom)
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

            d.execute(link, files, plan, step, rom)
        # nothing copied: the running app is left alone (no reset, no lost uptime)
        reset = reset and bool(plan.copy or plan.remove)
        if reset:
            link.reset()
        else:
            link.leave()
    finally:
        link.close()
    if as_json:
        UI.data(dict(plan.as_dict(), dry_run=False, reset=reset))
    elif not (plan.copy or plan.remove):
        UI.info(f"{device}: up to date ({plural(len(plan.same), 'file')} unchanged); board not reset")
    else:
        UI.info(f"{device}: copied {plural(len(plan.copy), 'file')} ({plural(plan.copy_bytes, 'byte')}), "
                f"removed {len(plan.remove)}, {len(plan.same)} unchanged" + ("; board reset" if reset else ""))
    return plan


@app.command()
def deploy(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.", autocompletion=_device_names)],
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
    image: Annotated[Path, typer.Option("--image", "-i", help="MicroPython firmware .bin for the chip.")],
    port: Annotated[Optional[str], typer.Option(
        "--port", "-p", help="Serial port (default: the one board plugged in; several: pick one).")] = None,
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
    from host_tools.ports import pick_port

    port = port or pick_port()
    if dry_run:
        for cmd in fl.plan(profile, port, image, erase=erase):
            UI.text(" ".join(cmd) + "\n")
        return
    from host_tools.board_link import check_port
    from host_tools.port_share import borrowed

    with borrowed(port, "uplink flash-micropython"):
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
        help="Device name from the fleet file (checked; optional).", autocompletion=_device_names)] = None,
    port: Annotated[Optional[str], typer.Option(
        "--port", "-p", help="Serial port (default: the one board plugged in).")] = None,
    baud: Annotated[int, typer.Option(help="Baud rate.")] = 115200,
    seconds: Annotated[Optional[float], typer.Option(help="Stop after this long (default: until Ctrl-C).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
):
    """Print the board's serial console until Ctrl-C (`uplink logs DEVICE`, as after `run`)."""
    from host_tools.console import writer
    from host_tools.ports import pick_port
    from host_tools.serial_console import follow

    if quiet:
        UI.level = -1
    if device is not None:
        dev = S.fleet().device(device)  # an unknown name: exit 3 with the nearest one
        if dev.board == "host" and port is None:
            raise UsageError(f"'{device}' is a host-board device: its log is `uplink sim {device}`")
    port = port or pick_port()
    UI.info(f"console of {(device + ' on ') if device else ''}{port} ({baud} baud); Ctrl-C to stop; "
            "deploy, run and repl in another terminal borrow the port")
    try:
        follow(port, writer(UI.text, UI.level < 0), baud=baud, seconds=seconds, info=UI.info, lend=True)
    except KeyboardInterrupt:
        pass


# -- repl ------------------------------------------------------------------------------------------
@app.command()
def repl(
    device: Annotated[Optional[str], typer.Argument(
        help="Device name from the fleet file (checked; optional).")] = None,
    port: Annotated[Optional[str], typer.Option(
        "--port", "-p", help="Serial port (default: the one board plugged in).")] = None,
):
    """The board's MicroPython REPL (mpremote's): Ctrl-C stops the running app, Ctrl-] leaves.
    A running `uplink logs` lends it the port and gets it back."""
    from host_tools import repl as r
    from host_tools.port_share import borrowed
    from host_tools.ports import pick_port

    if device is not None and S.fleet().device(device).board == "host" and port is None:
        raise UsageError(f"'{device}' is a host-board device: it has no serial port (`uplink sim {device}`)")
    port = port or pick_port()
    with borrowed(port, "uplink repl"):
        r.run(port, UI.info)


# -- sim / run --------------------------------------------------------------------------------------
QUIET_HELP = ("Leave out the firmware's line per reading, message and command (read:, pub:, cmd:): warnings "
              "and state changes only. Same as `uplink -q`.")


def _sim_brokers(device: str, platforms: list) -> list:
    """A local broker where the device's platform is a plain-MQTT address on this machine and
    nothing listens there (host_tools/local_broker.py); how to send it a command."""
    from host_tools import local_broker as lb
    from host_tools import sim_send

    started = []
    for p in platforms:
        where = lb.local_address(p.effective_url())
        if where is None:
            continue
        if not lb.listening(*where):
            try:
                started.append(lb.LocalBroker(port=where[1], host=where[0]).start())
            except lb.BrokerError as e:  # the firmware retries its broker, as a board would
                UI.warn(str(e))
                continue
            UI.info(f"nothing listened on {where[0]}:{where[1]}: started a local MQTT broker there "
                    f"({started[-1].kind}) for this run")
        if p.kind == "thingsboard":
            here = S.fleet_path.resolve() == Path("fleet.toml").resolve()
            opt = "" if here else f" -f {shlex.quote(str(S.fleet_path))}"
            for line in sim_send.hints(device, where, opt):
                UI.info(line)
    return started


def _sim_send(device: str, send: tuple[str, str]) -> None:
    from host_tools import sim_send

    cmd, text = send
    try:
        params = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--send {cmd} JSON: not JSON ({e}): for example --send setLed '{{\"on\": true}}'") from None
    from host_tools.local_broker import local_address

    dev = S.fleet().device(device)
    ps = dev.platforms or [dev.platform]  # several clouds: the one a local broker plays
    p = next((q for q in ps if q.kind == "thingsboard" and local_address(q.effective_url())), ps[0])
    reply = sim_send.send(sim_send.address(device, p.kind, p.effective_url()), cmd, params)
    UI.info(f"{device} answered {cmd}:")
    UI.data(reply)


def _do_sim(device: str, seconds: float | None, compiled: bool, heapsize: str | None) -> None:
    from host_tools import sim as simmod

    fleet = S.fleet()
    dev = fleet.device(device)
    state = S.build_root / "sim" / device
    state.mkdir(parents=True, exist_ok=True)
    lock = simmod.lock_state(state, device)  # before anything is written there
    try:
        brokers = _sim_brokers(device, dev.platforms or [dev.platform])
        try:
            _sim_run(fleet, device, state, lock, seconds, compiled, heapsize)
        finally:
            for broker in brokers:
                broker.stop()
    finally:
        os.close(lock)


def _sim_run(fleet, device: str, state: Path, lock: int, seconds: float | None, compiled: bool,
             heapsize: str | None) -> None:
    from host_tools import build as b
    from host_tools import hostboard
    from host_tools import sim as simmod
    from host_tools.console import writer
    from host_tools.project import stage
    from host_tools.provision import provision, write_file

    bundle = provision(fleet, device, S.store, S.build_root)
    src = S.sources()  # the host board's flash: the firmware with the project's user.py
    if compiled:
        firmware = b.build("host", out=S.build_root / "firmware" / "host", src=src)[0]
    else:
        firmware = stage(src, S.build_root / "source" / "host") if src.own else src.firmware
    hostboard.prepare_state_dir(bundle.dir, state)
    cfg = json.loads((state / "config.json").read_text())
    # the compiled firmware of an ESP32 board's device runs in that chip's memory on the ESP32
    # model (-X chip: its IDF heap, which TLS and the GC heap's growth share), unless --heapsize
    chip = hostboard.model_chip(cfg["device"]["board"]) if compiled and not heapsize else None
    # device.romfs: the package runs from the board's ROMFS partition, beside the state dir
    romfs = state.with_name(state.name + ".romfs") if compiled and cfg["device"].get("romfs") else None
    if romfs:  # written once, as a deploy would: the board's reboots find it there
        firmware = hostboard.romfs_flash(firmware, romfs)
    if cfg["device"].get("frozen"):  # the host board has no image to freeze it into
        UI.info(f"{device}: device.frozen: the host board runs the firmware from its filesystem, with the "
                "stock layout's memory (`uplink docs hardware`)")
        cfg["device"]["frozen"] = False
    if cfg["device"]["board"] != "host":  # the firmware would reach for an ESP32's Wi-Fi
        UI.info(f"{device}: the host board stands in for its {cfg['device']['board']}")
        cfg["device"]["board"] = "host"
    write_file(state / "config.json", (json.dumps(cfg, indent=2) + "\n").encode(), 0o600)
    heapsize = heapsize or simmod.default_heapsize(compiled)
    UI.detail(f"interpreter {hostboard.micropython()}"
              + ("" if hostboard.esp32_model() else f" (no ESP32 model: {hostboard.esp32_model_missing()})"))
    memory = (f"the {chip}'s memory" if chip else f"{heapsize} heap") + (", firmware in ROMFS" if romfs else "")
    UI.info(f"{device} on the host board ({'compiled' if compiled else 'sources'}, "
            f"{memory}; state in {state}); Ctrl-C to stop")
    problem = simmod.run(state, seconds=seconds, compiled=compiled, heapsize=heapsize,
                         write=writer(UI.text, UI.level < 0), info=UI.info, firmware=firmware, lock_fd=lock,
                         chip=chip, romfs=romfs)
    if hostboard.model_note():  # last, where it stays visible
        UI.warn(hostboard.model_note())
    if problem:
        raise UplinkError(problem)


@app.command()
def sim(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.", autocompletion=_device_names)],
    seconds: Annotated[Optional[float], typer.Option(help="Stop after this long (default: until Ctrl-C).")] = None,
    compiled: Annotated[bool, typer.Option(
        "--compiled/--source", help="Run the mpy-cross output, as the board does, or the sources.")] = True,
    heapsize: Annotated[Optional[str], typer.Option(
        help="MicroPython heap (default on the ESP32 model: the device's board's memory, its IDF "
             "heap included, for esp32-devkitc, -c3 and -s3; else 128k, an ESP32 without PSRAM; "
             "192k with --source).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
    send: Annotated[Optional[tuple[str, str]], typer.Option(
        "--send", metavar="CMD JSON",
        help="Send the running simulation a command (as its cloud would), print its reply, exit.")] = None,
):
    """Run the device's bundle on the host board (MicroPython unix port), against its broker;
    on this machine's address with no broker there, it starts one."""
    if quiet:
        UI.level = -1
    if send is not None:
        return _sim_send(device, send)
    _do_sim(device, seconds, compiled, heapsize)


@app.command()
def run(
    device: Annotated[str, typer.Argument(help="Device name from the fleet file.", autocompletion=_device_names)],
    port: Annotated[Optional[str], typer.Option(
        "--port", "-p", help="Serial port (default: the one board plugged in).")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Stop following the logs after this long.")] = None,
):
    """validate -> provision -> build -> deploy -> logs (host-board devices: sim)."""
    from host_tools.console import writer
    from host_tools.ports import pick_port, usb_identity
    from host_tools.serial_console import follow

    fleet = S.fleet()
    dev = fleet.device(device)
    UI.info(f"{fleet.path.name}: valid")
    if dev.board == "host" and port is None:
        _do_sim(device, seconds, True, None)
        return
    from host_tools.port_share import borrowed

    port = port or pick_port()
    usb = usb_identity(port)  # the deploy's reset may take the port away (S3/C3 native USB)
    with borrowed(port, "uplink run") as from_logs:
        _do_deploy(device, port, dry_run=False, reset=True)
    if from_logs:
        UI.info("the console goes on in the terminal running `uplink logs`")
        return
    time.sleep(0.3)
    UI.info(f"console of {port}; Ctrl-C to stop")
    try:
        follow(port, writer(UI.text, UI.level < 0), seconds=seconds, info=UI.info, usb=usb, returning=True)
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
