# A package over HTTP(S) straight to flash, at boot, before any cloud session: Blynk.Air's
# (uplink.ota_blynk notes the notification as ota.JOB and resets) and the token relay's
# (uplink.ota_relay). Run then, the download's TLS session and the Stage's 1 KB buffer get a heap
# no session has fragmented (beside a running app, 128k had no 2 KB block left for it). The
# download goes to flash in 1 KB pieces; a dropped connection resumes with a Range request.
# Loaded only for the boot's check and unloaded after it. docs/ota.md.
import asyncio
import gc

from uplink import https, log, ota, transport

TRIES = 6  # connections per boot's download (each resumes where the last stopped)
BOOTS = 3  # boots a download may take when the network fails it, then it has failed
RETRY_S = 3
READ_MS = 15000  # no byte for this long: the connection is dead
REDIRECTS = 3
PIECE = 512  # = transport.RBUF: readexactly(n) up to it costs one n-byte bytes, no bigger block


class Running(Exception):
    """The package's x-sha256 is the running app's: nothing to download (Blynk.Air without "ver")."""


async def at_boot(ctx, root="", sign=None, ca=None):
    """The job left before the reset: download, check, install, switch and reset. A failure is
    written into the job, reported by the platform's Updater once connected, and the app goes on."""
    job = ota.load_json(root + ota.JOB)
    if not job or job.get("failed") or job.get("installed"):
        return
    want = {"title": job.get("title") or "package", "version": job.get("version") or "", "size": job["size"],
            "sha256": None, "src": job["src"]}
    job["boots"] = job.get("boots", 0) + 1
    ota.save_json(root + ota.JOB, job)
    from uplink.ota_stage import Stage

    st = Stage(want, ota.BUF, root)  # its 1 KB buffer taken first
    try:
        await _download(ctx, st, want, job["url"], sign, ca)
        m = await st.verify(ctx.board.name)
        new = await st.install(m)
    except Running:
        st.drop()
        job["installed"], job["sha256"] = 1, want["sha256"]
        ota.save_json(root + ota.JOB, job)
        log.info("ota", "%s is the app running (sha256): nothing to install" % (want["version"] or "the package"))
        transport.forget_contexts()
        return
    except Exception as e:  # OtaError: the package's fault; OSError: the network's or the flash's
        st.close()  # what came is on flash for the next boot
        if isinstance(e, ota.OtaError) or job["boots"] >= BOOTS:
            st.drop()
            job["failed"] = str(e)[:200]
        else:  # the network: the download resumes at the next boot (Range)
            log.exc("ota", "download, boot %d of %d" % (job["boots"], BOOTS), e)
        ota.save_json(root + ota.JOB, job)
        log.error("ota", "download failed: %s" % e)
        transport.forget_contexts()  # the download's: the app's session makes its own
        return
    job["installed"] = 1
    job["sha256"] = want["sha256"]
    ota.save_json(root + ota.JOB, job)
    st.switch(new)
    log.info("ota", "%s installed in %s: on trial after the reset" % (want["version"], new))
    ctx.board.reset()


async def _download(ctx, st, want, url, sign=None, ca=None):
    have = min(st.begin() * ota.BUF, want["size"])  # a whole part left by a cut: checked again, not fetched
    ota.guard("room", st, ctx.cfg["outbox"]["max_bytes"])
    log.info("ota", "%s: %d bytes, from byte %d" % (want["version"] or "package", want["size"], have))
    tries = 0
    while have < want["size"]:
        try:
            have = await _get(ctx, st, want, url, have, sign, ca)
        except ota.OtaError:
            raise
        except (OSError, EOFError, asyncio.TimeoutError) as e:
            tries += 1
            if tries >= TRIES:
                raise OSError("download failed %d times, last: %s" % (tries, e))
            log.warn("ota", "download cut at byte %d (%s): resuming in %d s" % (st.have(), e, RETRY_S))
            have = st.have()  # (what _body added: the part's file stays open across connections)
            gc.collect()
            await asyncio.sleep(RETRY_S)


async def open_get(ctx, url, first, sign=None, ca=None, last=None):
    """(stream, status, headers, host) of a GET from byte `first` (to `last`), headers read.
    `sign(path)`: headers that authenticate the request (the token relay's); `ca`: the server's
    CA, by default the platform's (Blynk's broker and its file server share ISRG Root X1)."""
    tls, host, port, path = https.parse_url(url)
    if ca is None:
        ca = ctx.cfg["platform"].get("ca")
    tc = transport.tls_context(ca) if tls else None
    s = await transport.open_tcp(host, port, ssl_ctx=tc, server_hostname=host, timeout_ms=READ_MS)
    try:
        h = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: uplink\r\n" % (path, host)
        if first or last is not None:
            h += "Range: bytes=%d-%s\r\n" % (first, "" if last is None else last)
        if sign is not None:
            hs = sign(path)
            for k in hs:
                h += "%s: %s\r\n" % (k, hs[k])
        s.write((h + "\r\n").encode())
        h = None
        await s.drain()
        status, hd = await asyncio.wait_for_ms(_head(s), READ_MS)
    except BaseException:
        s.close()
        raise
    return s, status, hd, host


async def _get(ctx, st, want, url, have, sign=None, ca=None):
    """One connection: GET from byte `have` (Range), appended to the Stage 1 KB at a time.
    Returns the bytes on flash when the connection ends."""
    for _ in range(REDIRECTS + 1):
        s, status, hd, host = await open_get(ctx, url, have, sign, ca)
        try:
            if status in (301, 302, 303, 307, 308) and hd.get("location"):
                url = hd["location"]
                continue
            if status == 200 and have:  # the server ignores Range: from the start again
                st.drop()
                st.begin()
                have = 0
            elif status == 206:
                if not hd.get("range", "").startswith("bytes %d-" % have):
                    raise ota.OtaError("download: the server resumed at %r, not byte %d"
                                       % (hd.get("range"), have))
            elif status != 200:
                raise ota.OtaError("download: HTTP %d from %s (an expired link? ask for the update again)"
                                   % (status, host))
            if hd.get("sha256"):
                want["sha256"] = hd["sha256"]
                if hd["sha256"] == ota.read_slot(st.root).get("sum"):
                    raise Running()
            if hd.get("chunked"):
                raise ota.OtaError("download: %s sent chunked encoding; a plain Content-Length is needed"
                                   % host)
            n = hd.get("length")
            left = want["size"] - have if n is None else n
            if have + left != want["size"]:
                raise ota.OtaError("download: %d bytes from byte %d, but the package was announced as %d"
                                   % (left, have, want["size"]))
            return await _body(s, st, have, left)
        finally:
            s.close()
    raise ota.OtaError("download: more than %d redirects" % REDIRECTS)


async def _body(s, st, have, left):
    buf = st.buf
    k = 0  # bytes in buf not yet on flash
    while left:
        d = await asyncio.wait_for_ms(s.readexactly(min(PIECE, left, ota.BUF - k)), READ_MS)
        n = len(d)
        buf[k:k + n] = d
        d = None
        k += n
        left -= n
        if k == ota.BUF or not left:
            st.add(buf[:k])  # on flash before more is read: a cut resumes from here
            have += k
            k = 0
    return have


async def _head(s):
    """The status line and the headers this download needs: {length, range, sha256 (hex),
    location, chunked}."""
    line = await https.read_line(s)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise OSError("not an HTTP answer")
    status = int(parts[1])
    hd = {}
    while True:
        line = await https.read_line(s, 600)  # a redirect's Location carries a long signed URL
        if line in (b"\r\n", b"\n"):
            return status, hd
        i = line.find(b":")
        if i < 0:
            continue
        name = line[:i].strip().lower()
        v = line[i + 1:].strip()
        if name == b"content-length":
            hd["length"] = int(v)
        elif name == b"content-range":
            hd["range"] = v.decode()
        elif name == b"x-sha256":  # base64, as Blynk sends it
            import binascii

            try:
                hd["sha256"] = "".join("%02x" % x for x in binascii.a2b_base64(v))
            except ValueError:
                pass
        elif name == b"x-fw-ver":
            hd["ver"] = v.decode()
        elif name == b"location":
            hd["location"] = v.decode()
        elif name == b"transfer-encoding" and b"chunked" in v.lower():
            hd["chunked"] = True
