# What must not be downloaded, checked by the updaters (uplink.ota.guard loads this for one
# call at a time): bundles refused before, kept on flash with their reasons so a reset does not
# fetch them again (docs/ota.md, Checks), and a bundle the filesystem has no room for.
import os

from uplink import ota

REFUSED_MAX = 8


def refused(key, root=""):
    """Why the bundle `key` (its announced checksum) was refused before, or None. On flash:
    a reset does not make a wrong checksum or board worth a second download."""
    if not key:
        return None
    s = ota.read_slot(root)
    if key in (s.get("bad"), s.get("sum") if "failed" in s else None):
        return "rolled back before"
    for k, why in ota.load_json(root + ota.REFUSED) or ():
        if k == key:
            return why
    return None


def refuse(key, why, root=""):
    """Remember the bundle `key` as refused, with why; the oldest of REFUSED_MAX go."""
    if not key:
        return
    rs = [r for r in ota.load_json(root + ota.REFUSED) or () if r[0] != key][-(REFUSED_MAX - 1):]
    rs.append([key, why[:200]])
    ota.save_json(root + ota.REFUSED, rs)


def room(st, reserve):
    """Refuse, before the first chunk, a bundle the filesystem cannot hold beside `reserve`
    bytes kept for the outbox: the rest of the download, and the slot it unpacks into
    (about its size; the slot not running is emptied for it)."""
    r = st.root
    size = st.want["size"]
    try:
        fs = os.statvfs(r or "/")
    except OSError:
        return
    free = fs[1] * fs[4]
    cur = ota.read_slot(r).get("cur") or ""
    free += _du(r + ("app_b" if cur == "app_a" else "app_a"))
    need = size - st.n + size + 2 * st.piece
    if need + reserve > free:
        e = ota.OtaError("no room: the bundle needs %d bytes of flash (%d download + unpacked), %d are free "
                         "beside %d kept for the outbox; make room or a smaller bundle" % (need, size, free, reserve))
        e.retry = True
        raise e


def _du(path):
    """Bytes the files under path take, each rounded up to whole blocks."""
    from uplink.ota_stage import _block  # (loaded: room() is asked with a Stage)

    b = _block("")
    n = 0
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return 0
    for e in entries:
        p = path + "/" + e[0]
        n += _du(p) if e[1] == 0x4000 else (max(ota._size(p), 0) + b - 1) // b * b
    return n
