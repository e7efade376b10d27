"""The firmware in ROMFS (`device.romfs`): the uplink/ package as one image in the board's
ROMFS partition, so its bytecode runs from flash instead of being copied into the GC heap
(py/persistentcode.c, mp_reader_try_read_rom). The rest (main.py, boot.py, user code, the
bundle) stays on the filesystem, where `uplink deploy` puts it as before.

The board writes the image as `mpremote romfs deploy` does: through the segment's own
object where it has one (the ESP32 port's esp32.Partition: erase with ioctl(6), writeblocks),
else through vfs.rom_ioctl's write commands (3 prepare, 4 write, 5 complete).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import PurePosixPath

from host_tools.board_link import WBITS, BoardError, BoardLink, bytes_literal, deflate_raw

PACKAGE = "uplink"
IMAGE = "/rom"  # its name in a deploy's plan
CHUNK = 4096  # bytes of image per flash write: one sector
PLAIN = 1024  # bytes of it per exec to a board without deflate
HINT = ("flash a MicroPython image built with MICROPY_VFS_ROM=1 and a partition table with a "
        "`romfs` partition (`uplink docs hardware`, \"Firmware in ROMFS\"), or set device.romfs = false")


def split(files: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(the files for the ROMFS image, the files for the filesystem)."""
    rom = {p: d for p, d in files.items() if p.split("/")[0] == PACKAGE}
    return rom, {p: d for p, d in files.items() if p not in rom}


def image(rom_files: dict[str, bytes]) -> bytes:
    """A ROMFS image holding `rom_files` (board path -> content) at the same paths under /rom."""
    from mpremote.romfs import VfsRomWriter

    w = VfsRomWriter()
    opened: list[str] = []
    for path in sorted(rom_files, key=lambda p: PurePosixPath(p).parts):
        parts = PurePosixPath(path).parts
        dirs = list(parts[:-1])
        while opened and opened != dirs[:len(opened)]:
            w.closedir()
            opened.pop()
        for d in dirs[len(opened):]:
            w.opendir(d)
            opened.append(d)
        w.mkfile(parts[-1], rom_files[path])
    for _ in opened:
        w.closedir()
    return w.finalise()


_SEGMENT = """\
import vfs
def _rs():
 if not hasattr(vfs,'rom_ioctl') or vfs.rom_ioctl(1)<1:
  return None
 d=vfs.rom_ioctl(2,0)
 if isinstance(d,int):
  return None
 if hasattr(d,'ioctl'):
  return (d.ioctl(4,0)*d.ioctl(5,0),1)
 return (len(d),0)
print(repr(_rs()))
"""


def segment(link: BoardLink) -> tuple[int, bool]:
    """(the ROMFS partition's size, whether it is written through its own object); a
    BoardError naming the fix when the board's MicroPython has none."""
    got = _eval(link, _SEGMENT)
    if got is None:
        raise BoardError(f"device.romfs is set but the board's MicroPython has no ROMFS partition: {HINT}")
    size, has_object = got
    return size, bool(has_object)


def _eval(link: BoardLink, code: str):
    import ast

    return ast.literal_eval(link.exec(code).decode().strip())


def state(link: BoardLink, img: bytes) -> str:
    """"same" when the partition already begins with `img`, else "changed" (the ROMFS
    partition always exists: what it holds is compared, on the board, by sha256)."""
    size, _ = segment(link)
    if len(img) > size:
        raise BoardError(f"the firmware's ROMFS image is {len(img)} bytes, more than the board's "
                         f"{size}-byte ROMFS partition: make the partition bigger ({HINT.split(', or')[0]})")
    same = _eval(link, "import hashlib,vfs\n"
                       f"print(repr(hashlib.sha256(memoryview(vfs.rom_ioctl(2,0))[:{len(img)}]).digest()"
                       f"=={hashlib.sha256(img).digest()!r}))\n")
    return "same" if same else "changed"


def write(link: BoardLink, img: bytes, progress: Callable[[int], None] | None = None) -> None:
    """Erase what the image needs of the partition, write it a sector at a time, and check
    its sha256 on the board; a BoardExecError if the board reads back anything else."""
    _, has_object = segment(link)
    padded = img + bytes(-len(img) % CHUNK)
    link.exec("import vfs,io,hashlib\ntry:\n vfs.umount('/rom')\nexcept OSError:\n pass\n"
              "d=vfs.rom_ioctl(2,0)\n")
    if has_object:  # the ESP32 port's Partition: block = sector
        link.exec(f"for b in range({len(padded) // CHUNK}):\n d.ioctl(6,b)\n")
    else:
        link.exec(f"r=vfs.rom_ioctl(3,0,{len(padded)})\nif r<0:raise OSError('ROMFS prepare failed: %d'%r)\n")
    # one sector buffer on the board for the whole image: a 4 KB allocation per chunk fails
    # in a fragmented heap (the maintenance hold's, after a deploy's file writes)
    deflate = link.has_deflate
    link.exec("_rb=bytearray(%d)\n" % CHUNK + ("from deflate import DeflateIO,RAW\n" if deflate else ""))
    for off in range(0, len(padded), CHUNK):
        chunk = padded[off:off + CHUNK]
        if deflate:
            fill = b"DeflateIO(io.BytesIO(%s),RAW,%d).readinto(_rb)\n" % (bytes_literal(deflate_raw(chunk)), WBITS)
        else:  # as literals of PLAIN bytes each: a 4 KB one failed to compile in a fragmented 64k heap
            for at in range(0, CHUNK - PLAIN, PLAIN):
                link.exec(b"_rb[%d:%d]=%s\n" % (at, at + PLAIN, bytes_literal(chunk[at:at + PLAIN])))
            fill = b"_rb[%d:]=%s\n" % (CHUNK - PLAIN, bytes_literal(chunk[CHUNK - PLAIN:]))
        if has_object:
            link.exec(fill + b"d.writeblocks(%d,_rb)\n" % (off // CHUNK))
        else:
            link.exec(fill + b"r=vfs.rom_ioctl(4,0,%d,_rb)\nif r<0:raise OSError('ROMFS write failed: %%d'%%r)\n" % off)
        if progress:
            progress(min(CHUNK, len(img) - off))
    if not has_object:
        link.exec("vfs.rom_ioctl(5,0)")
    link.exec(f"if hashlib.sha256(memoryview(d)[:{len(img)}]).digest()!={hashlib.sha256(img).digest()!r}:\n"
              " raise OSError('the ROMFS image arrived damaged (sha256 differs): deploy again')\n")
