"""The ESP32 model's chip mode (`-X chip=`, tools/esp32-model/README.md): the IDF pool per
chip, the GC heap starting at the port's initial size and growing out of the pool, mbedTLS
allocating from it (a handshake fails with ENOMEM when the pool cannot serve it), and the
old fixed `-X heapsize` mode unchanged. Its ROMFS partition (`-X romfs=`): mounted at /rom,
imported from in place, written through vfs.rom_ioctl as `mpremote romfs deploy` does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mpremote.romfs import VfsRomWriter

from host_tools import build, hostboard

# tools/esp32-model/README.md, "Chip mode": regions free at boot (8-byte aligned), the GC
# heap's first area (MICROPY_GC_INITIAL_HEAP_SIZE) and Wi-Fi's reservation (10 x 1600 B)
CHIPS = {
    "esp32": ([5608, 62000, 13448, 87000], 56 * 1024),
    "esp32c3": ([167000, 59000], 64 * 1024),
    "esp32s3": ([32024, 230672, 16864, 7752], 64 * 1024),
}
WIFI = 10 * 1600
HDR = 8  # the model's block header

INFO = """
import esp32, gc
def idf():
    i = esp32.idf_heap_info(esp32.HEAP_DATA)
    return sum(r[1] for r in i), max([r[2] for r in i] or [0])
"""


# hs(): one TLS handshake with the test broker (its port is filled in, its CA is the last
# argument): the session, or the exception that ended it
HANDSHAKE = """
import socket, ssl, sys
ca = open(sys.argv[-1], 'rb').read()
def hs():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    s = socket.socket()
    s.connect(socket.getaddrinfo('localhost', %d)[0][-1])
    try:
        return ctx.wrap_socket(s, server_hostname='localhost')
    except (OSError, ValueError) as e:   # ValueError: out of memory mid-way, reported by mbedTLS
        s.close()                        # as "certificate is not correctly signed"
        return e
"""


def run(code: str, *args: str, argv: tuple[str, ...] = (), timeout: float = 60,
        fw: Path = hostboard.FIRMWARE) -> subprocess.CompletedProcess:
    """`fw`: the directory on MICROPYPATH (before `.frozen`), the board's filesystem."""
    exe = hostboard.esp32_model()
    if not exe:
        pytest.skip(f"no ESP32 model: {hostboard.esp32_model_missing()}")
    return subprocess.run([exe, *args, "-c", INFO + code, *argv], capture_output=True, text=True, timeout=timeout,
                          env=hostboard.firmware_env(fw))


def values(p: subprocess.CompletedProcess) -> list[int]:
    assert p.returncode == 0, p.stdout + p.stderr
    return [int(x) for x in p.stdout.split()]


@pytest.mark.parametrize("chip", sorted(CHIPS))
def test_each_chip_has_its_pool_with_the_initial_gc_area_and_wifi_taken(chip):
    regions, initial = CHIPS[chip]
    p = run("print(esp32.model_chip())\nfor r in esp32.idf_heap_info(esp32.HEAP_DATA): print(r[0], r[1])",
            "-X", f"chip={chip}")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split("\n")
    assert lines[0] == chip
    rows = [tuple(int(x) for x in ln.split()) for ln in lines[1:] if ln]
    assert [r[0] for r in rows] == regions
    taken = sum(r[0] - r[1] for r in rows)
    assert taken == (initial + HDR) + 10 * (WIFI // 10 + HDR)


def test_the_gc_heap_grows_from_the_pool_and_gives_an_emptied_area_back():
    code = """
out = [0] * 5                        # made first: nothing new lives in the grown areas after
def grow():
    keep = [bytearray(512) for _ in range(200)]   # 100 KB: more than the 56 KB first area
    out[2] = gc.mem_alloc() + gc.mem_free() - idf()[1]
    out[3] = idf()[0]
out[1] = idf()[0]
out[0] = gc.mem_alloc() + gc.mem_free() - idf()[1]   # mem_free counts the largest block (split heap)
grow()
gc.collect()
out[4] = idf()[0]
print(*out)
"""
    total0, free0, total1, free1, free2 = values(run(code, "-X", "chip=esp32"))
    assert 54000 < total0 < 56 * 1024  # the 56 KB first area, less the GC's tables
    assert total1 > 100 * 1024  # grew
    assert free0 - free1 >= total1 - total0  # ... and what it grew by left the IDF pool
    assert free2 == free0  # a collection that empties the new areas returns them (py/gc.c gc_sweep)


def test_the_gc_heap_takes_the_pool_down_to_its_last_blocks():
    code = """
keep = []
try:
    while True:
        keep.append(bytearray(1000))
except MemoryError:
    pass
keep = keep[:-8]   # room for the print
print(*idf())
"""
    free, largest = values(run(code, "-X", "chip=esp32"))
    # gc_try_add_heap wants the failed allocation + 2 KB: what is left is smaller than that
    assert largest < 1000 + 2048


@pytest.mark.timeout(120)
def test_a_tls_handshake_takes_its_buffers_from_the_pool_and_fails_with_enomem_when_it_cannot(broker):
    code = HANDSHAKE % broker.ports["mqtts"] + """
gc.collect()
gc0 = gc.mem_alloc()
free0, _ = idf()
t = hs()
gc.collect()
free1, _ = idf()
print(free0 - free1, gc.mem_alloc() - gc0)
keep = []
while idf()[1] > 12000:            # the GC heap grows until no block holds the 16 KB in-buffer
    keep.append(bytearray(2000))
print(hs().errno)
"""
    idf_taken, gc_taken, errno = values(run(code, "-X", "chip=esp32", argv=(str(broker.pki.ca_der),)))
    assert idf_taken > 16384 + 4096  # mbedTLS's in- and out-buffers (16 KB + 4 KB) are IDF heap
    assert gc_taken < 4096  # not GC heap
    assert errno == 12  # ENOMEM, as modtls_mbedtls.c raises for MBEDTLS_ERR_SSL_ALLOC_FAILED


@pytest.mark.timeout(120)
def test_an_esp32_whose_gc_heap_grew_once_has_room_for_wifi_and_one_tls_session_not_two(broker):
    # the calibration (commit f6d630877c): "after the heap is grown one time ... enough to start
    # WiFi and do a HTTPS request". Wi-Fi's buffers are taken at boot in the model.
    code = HANDSHAKE % broker.ports["mqtts"] + """
keep = [bytearray(1000) for _ in range(60)]       # 60 KB: the 56 KB area is not enough
gc.collect()
total = gc.mem_alloc() + gc.mem_free() - idf()[1]
one = hs()
two = hs()
print(total, 0 if isinstance(one, Exception) else 1, 1 if isinstance(two, Exception) else 0)
"""
    total, first_ok, second_failed = values(run(code, "-X", "chip=esp32", argv=(str(broker.pki.ca_der),)))
    assert 110000 < total < 113000  # grown once: 111 936 in the commit (two 56 KB areas)
    assert (first_ok, second_failed) == (1, 1)


def test_without_a_chip_the_heap_is_one_fixed_block_and_there_is_no_pool():
    code = """
keep = []
try:
    while True:
        keep.append(bytearray(1000))
except MemoryError:
    pass
keep = None
print(len(esp32.idf_heap_info(esp32.HEAP_DATA)), 0 if esp32.model_chip() is None else 1, gc.mem_alloc() + gc.mem_free())
"""
    regions, chip, total = values(run(code, "-X", "heapsize=64k"))
    assert (regions, chip) == (0, 0)
    assert 60 * 1024 < total <= 64 * 1024  # never grew


def test_chip_and_heapsize_exclude_each_other_and_a_chip_must_be_known():
    p = run("pass", "-X", "chip=esp32", "-X", "heapsize=64k")
    assert p.returncode != 0 and "exclude each other" in p.stderr
    p = run("pass", "-X", "chip=esp8266")
    assert p.returncode != 0


# ROMFS (`-X romfs=FILE`): FILE is the partition, 4096-byte sectors as the flash erases
SECTOR = 4096


def romfs(files: dict[str, bytes]) -> bytes:
    """A ROMFS image (mpremote's writer) of {"dir/name": contents}, one directory level."""
    w = VfsRomWriter()
    for d in sorted({k.rpartition("/")[0] for k in files}):
        if d:
            w.opendir(d)
        for k in sorted(files):
            if k.rpartition("/")[0] == d:
                w.mkfile(k.rpartition("/")[2], files[k])
        if d:
            w.closedir()
    return w.finalise()


def partition(path: Path, image: bytes, size: int = 4 * SECTOR) -> Path:
    """A partition file holding `image`, the rest erased (0xFF), as deploy leaves it."""
    assert len(image) <= size
    path.write_bytes(image + b"\xff" * (size - len(image)))
    return path


def mpy(tmp_path: Path, source: str) -> bytes:
    src = tmp_path / "m.py"
    src.write_text(source)
    subprocess.run([build.mpy_cross_bin(), "-o", str(tmp_path / "m.mpy"), str(src)], check=True)
    return (tmp_path / "m.mpy").read_bytes()


def test_a_romfs_partition_is_mounted_at_rom_and_imported_from_after_micropypath(tmp_path):
    image = romfs({"pkg/__init__.py": b"X = 42\n", "lib/m.mpy": mpy(tmp_path, "Y = 'from rom'\n")})
    part = partition(tmp_path / "romfs.bin", image)
    code = """
import sys, vfs, pkg, m
print(sys.path[-2:], sys.path.index('.frozen') < sys.path.index('/rom'))
print(pkg.__file__, pkg.X, m.__file__, m.Y)
seg = vfs.rom_ioctl(2, 0)
print(vfs.rom_ioctl(1), len(seg), bytes(seg[:3]), vfs.rom_ioctl(6, 0))
"""
    p = run(code, "-X", f"romfs={part}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split("\n")[:3] == [
        "['/rom', '/rom/lib'] True",  # the ESP32 port's sys.path entries, after MICROPYPATH's
        "/rom/pkg/__init__.py 42 /rom/lib/m.mpy from rom",
        f"1 {4 * SECTOR} {image[:3]!r} {SECTOR}",  # the whole file is the one segment
    ]


@pytest.mark.timeout(120)
def test_modules_imported_from_romfs_keep_their_bytecode_out_of_the_gc_heap(tmp_path):
    from tests.integration.mpy import compiled_firmware

    fw = compiled_firmware()
    image = hostboard.romfs_image(fw)  # its uplink/ package
    part = partition(tmp_path / "romfs.bin", image, -(-len(image) // SECTOR) * SECTOR)
    code = """
gc.collect()
a = gc.mem_alloc()
import uplink.mqtt, uplink.outbox
gc.collect()
print(gc.mem_alloc() - a, 1 if uplink.mqtt.__file__.startswith('/rom/') else 0)
"""
    in_dir, dir_rom = values(run(code, "-X", "heapsize=256k", fw=fw))
    (tmp_path / "empty").mkdir()  # uplink/ only in the partition
    in_rom, rom_rom = values(run(code, "-X", "heapsize=256k", "-X", f"romfs={part}", fw=tmp_path / "empty"))
    assert (dir_rom, rom_rom) == (0, 1)
    # from /rom the bytecode, qstrs and constants stay in the mapped partition
    # (py/persistentcode.c, mp_reader_try_read_rom): 12.5 KB of heap against 28.7 KB from a
    # directory, whose .mpy files are loaded into the heap
    assert in_rom < 0.7 * in_dir, (in_rom, in_dir)


def test_romfs_is_written_through_rom_ioctl_as_mpremote_deploys_it_and_read_by_the_next_start(tmp_path):
    old = romfs({"pkg/__init__.py": b"X = 'old'\n"})
    new = romfs({"pkg/__init__.py": b"X = 'new'\n", "pkg/more.py": b"Z = 1\n" * 1500})  # > 1 sector
    assert len(new) > SECTOR
    part = partition(tmp_path / "romfs.bin", old)
    (tmp_path / "new.img").write_bytes(new)
    # the sequence of mpremote/commands.py _do_romfs_deploy for a partition without an object
    code = """
import sys, vfs
img = open(sys.argv[-1], 'rb').read()
try:
    vfs.umount('/rom')
except OSError:
    pass
seg = vfs.rom_ioctl(2, 0)
n = (len(img) + 4095) // 4096 * 4096
print(vfs.rom_ioctl(3, 0, 0, n), bytes(seg[:3]) == b'\\xff' * 3)   # erased, seen in the mapping
for off in range(0, len(img), 4096):
    chunk = img[off:off + 4096]
    print(vfs.rom_ioctl(4, 0, off, chunk + bytes(4096 - len(chunk))), end=' ')
print(vfs.rom_ioctl(5, 0))
print(bytes(seg[:len(img)]) == img)
print(vfs.rom_ioctl(4, 0, len(seg) - 2, b'abc'), vfs.rom_ioctl(4, 0, len(seg) + 4096, b'a'),
      vfs.rom_ioctl(3, 0, 1, 4096))
"""
    p = run(code, "-X", f"romfs={part}", argv=(str(tmp_path / "new.img"),))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split("\n")[:4] == [
        "4 True",  # 4: the smallest write
        "0 " * (-(-len(new) // SECTOR)) + "0",
        "True",
        "-22 -22 -22",  # EINVAL: past the end, or an erase not on a sector
    ]
    assert part.read_bytes()[:len(new)] == new and part.stat().st_size == 4 * SECTOR
    p = run("import pkg, pkg.more\nprint(pkg.X, pkg.more.Z, pkg.__file__)", "-X", f"romfs={part}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == ["new", "1", "/rom/pkg/__init__.py"]


def test_without_romfs_there_is_no_segment_and_no_rom_on_the_path():
    p = run("import sys, vfs\nprint(vfs.rom_ioctl(1), vfs.rom_ioctl(2, 0), [d for d in sys.path if '/rom' in d])")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == ["0", "-22", "[]"]


def test_an_erased_partition_is_a_segment_but_not_mounted_nor_on_the_path(tmp_path):
    part = tmp_path / "erased.bin"
    part.write_bytes(b"\xff" * SECTOR * 2)  # as a board before its first ROMFS deploy
    p = run("import sys, vfs, os\nprint(vfs.rom_ioctl(1), [d for d in sys.path if '/rom' in d])\n"
            "try:\n os.listdir('/rom')\nexcept OSError:\n print('no /rom')", "-X", f"romfs={part}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split("\n")[:2] == ["1 []", "no /rom"]


def test_a_romfs_file_that_is_missing_or_not_a_partition_stops_the_model(tmp_path):
    missing = tmp_path / "missing.bin"
    odd = tmp_path / "odd.bin"
    odd.write_bytes(bytes(SECTOR + 1))  # not whole sectors
    for f in (missing, odd):
        p = run("print('ran')", "-X", f"romfs={f}")
        assert (p.returncode, p.stdout) == (1, ""), p.stdout + p.stderr
        assert str(f) in p.stderr
