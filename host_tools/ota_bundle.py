"""`uplink build --bundle`: one file holding a board's app, for over-the-air updates.

Format (docs/ota.md), chosen so a board can check and unpack it while streaming it from flash
with a 1 KB buffer: one line of JSON (the manifest), then every file's bytes back to back in
the manifest's order. Nothing is compressed (a board would need the RAM for a window).

    {"format": "uplink-bundle/1", "title": ..., "version": ..., "board": ..., "arch": ...,
     "files": [[path, size, sha256-hex], ...], "body_sha256": ...}\\n<file bytes>...

`body_sha256` covers the bytes after the manifest line; the sha256 of the whole file (what a
cloud's OTA checksum is) is printed and written beside it as `<bundle>.sha256`. boot.py and
main.py are not in it: they are the boot loader that picks the app slot, and stay as deployed
over USB. config.json never is (secrets stay on the board).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from host_tools.build import BuildError
from host_tools.private_dir import private_dir, private_file

FORMAT = "uplink-bundle/1"
LEFT_OUT = {"boot.py", "main.py", "config.json"}  # the boot loader; the board's secrets
HEADER_MAX = 8192  # the board reads the manifest line into RAM: keep it bounded
_VERSION = re.compile(r"^[A-Za-z0-9._+-]{1,32}$")


class BundleError(BuildError):  # `uplink build` reports it as a build failure (exit 6)
    pass


@dataclass
class Bundle:
    path: Path
    manifest: dict
    size: int
    sha256: str  # of the whole file: the cloud's fw_checksum


def title_for(board: str) -> str:
    return f"uplink-{board}"


def make(files: dict[str, Path], out: Path | Callable[[str], Path], *, board: str, arch: str | None,
         version: str, title: str | None = None, trial_s: int | None = None,
         commit_after_s: int | None = None) -> Bundle:
    """Write the bundle of `files` (board path -> local file) to `out` (or `out(version)`).
    A version ending in "+" gets the content's short sha256 ("0.1.0+" -> "0.1.0+3f9c2a1b"):
    different content never carries the same version, so a board never takes a new app for
    the one it runs (ota.py drops an announcement of the running version)."""
    derived = version.endswith("+")
    if not _VERSION.match(version + ("0" * 8 if derived else "")):
        raise BundleError(f"version {version!r}: 1 to 32 of letters, digits and . _ + -")
    entries, body = [], hashlib.sha256()
    for rel in sorted(files):
        if rel in LEFT_OUT or rel.split("/")[-1] == "config.json":
            continue
        if rel.startswith("/") or ".." in rel.split("/"):
            raise BundleError(f"{rel}: not a path inside the app")
        data = files[rel].read_bytes()
        entries.append([rel, len(data), hashlib.sha256(data).hexdigest()])
        body.update(data)
    if not entries:
        raise BundleError("nothing to bundle: the build is empty")
    if derived:
        version += body.hexdigest()[:8]
    if callable(out):
        out = out(version)
    manifest = {"format": FORMAT, "title": title or title_for(board), "version": version, "board": board,
                "arch": arch, "files": entries, "body_sha256": body.hexdigest()}
    if trial_s is not None:
        manifest["trial_s"] = trial_s
    if commit_after_s is not None:
        manifest["commit_after_s"] = commit_after_s
    head = (json.dumps(manifest, separators=(",", ":")) + "\n").encode()
    if len(head) > HEADER_MAX:
        raise BundleError(f"manifest of {len(head)} bytes is over {HEADER_MAX}: too many files")
    whole = hashlib.sha256(head)
    with private_file(out) as f:  # a cloud or the relay ships it to boards: nobody else may swap it
        f.write(head)
        for rel, _, _ in entries:
            data = files[rel].read_bytes()
            f.write(data)
            whole.update(data)
    digest = whole.hexdigest()
    _write_sha256(out, digest)
    return Bundle(out, manifest, out.stat().st_size, digest)


def _write_sha256(bundle: Path, digest: str) -> None:
    with private_file(bundle.with_name(bundle.name + ".sha256")) as f:
        f.write(f"{digest}  {bundle.name}\n".encode())


def refuse_running(version: str, usb_version: str, offered: Bundle | None = None) -> None:
    """BundleError for a version a board may be running with other content: the firmware's own
    (what a USB deploy reports) or the last offer's. The board would drop the announcement."""
    fix = (f"leave --version out (uplink derives {usb_version}+<the content's sha256>) or choose a "
           "version no board runs")
    if version == usb_version:
        raise BundleError(f"version {version} is what a board deployed over USB reports as running (the "
                          f"firmware's own): a board running it never installs this update; {fix}")
    if offered is not None and offered.manifest.get("version") == version:
        raise BundleError(f"version {version} is already offered with other content ({offered.path}): a "
                          f"board that installed that one never installs this; {fix}")


def offered(state_dir: Path, device: str) -> Bundle | None:
    """What `uplink ota` left for the relay for `device` last (offer()), if anything readable;
    an earlier layout's <device>.uplb too."""
    ota = Path(state_dir) / "ota"
    try:
        try:
            path = blob_path(ota, json.loads((ota / f"{device}.offer").read_text())["sha256"])
        except FileNotFoundError:
            path = ota / f"{device}.uplb"
        return read(path)
    except (OSError, ValueError, KeyError, TypeError, BundleError):
        return None


def offer(made: Bundle, state_dir: Path, device: str) -> Path:
    """Leave `made` for `uplink relay`: the bundle content-addressed as
    <state_dir>/ota/sha256/<sha256>.uplb (written once, shared by every device offered it),
    and the offer <state_dir>/ota/<device>.offer ({"sha256", "version", "size"}). Replicas
    on Redis get the offer from there too (`publish_offer`). Returns the bundle's path."""
    raw = made.path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != made.sha256:  # these bytes are the ones checked
        raise BundleError(f"{made.path}: changed while being read")
    private_dir(state_dir)  # as the relay's keys there: a loose parent would let ota/ be swapped
    ota = Path(state_dir) / "ota"
    blob = blob_path(ota, made.sha256)
    if not (blob.exists() and hashlib.sha256(blob.read_bytes()).digest().hex() == made.sha256):
        with private_file(blob) as f:  # whole, or absent: never half
            f.write(raw)
    with private_file(ota / f"{device}.offer") as f:
        f.write(offer_json(made).encode())
    for old in (ota / f"{device}.uplb", ota / f"{device}.uplb.sha256"):  # an earlier layout's offer
        old.unlink(missing_ok=True)
    return blob


def blob_path(ota_dir: Path, sha256: str) -> Path:
    return Path(ota_dir) / "sha256" / f"{sha256}.uplb"


def offer_json(made: Bundle) -> str:
    return json.dumps({"sha256": made.sha256, "version": str(made.manifest.get("version")),
                       "size": made.size}, separators=(",", ":"))


def read(path: Path) -> Bundle:
    """Open and fully check a bundle (the same checks the board makes)."""
    raw = Path(path).read_bytes()
    nl = raw.find(b"\n")
    if nl < 0 or nl >= HEADER_MAX:
        raise BundleError(f"{path}: no manifest line")
    m = json.loads(raw[:nl])
    if m.get("format") != FORMAT:
        raise BundleError(f"{path}: format {m.get('format')!r}, expected {FORMAT}")
    body = raw[nl + 1:]
    if hashlib.sha256(body).hexdigest() != m["body_sha256"]:
        raise BundleError(f"{path}: body sha256 mismatch")
    pos = 0
    for rel, size, sha in m["files"]:
        if hashlib.sha256(body[pos:pos + size]).hexdigest() != sha:
            raise BundleError(f"{path}: {rel}: sha256 mismatch")
        pos += size
    if pos != len(body):
        raise BundleError(f"{path}: {len(body) - pos} bytes after the last file")
    return Bundle(Path(path), m, len(raw), hashlib.sha256(raw).hexdigest())


def build_bundle(board: str, version: str, out: Path | Callable[[str], Path], *, build_root: Path, src=None,
                 **kw) -> Bundle:
    """mpy-cross the firmware (with `src`: a user's project, host_tools.project) for `board`
    (host_tools.build) and bundle it."""
    from host_tools import build as b
    from host_tools.fleet import board_profile

    private_dir(build_root)  # what goes into the bundle must be ours alone from compile to ship
    root, _ = b.build(board, out=build_root / "firmware" / board, src=src)
    return make(b.files(root), out, board=board, arch=board_profile(board).get("mpy_arch"), version=version, **kw)
