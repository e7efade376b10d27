# Over-the-air updates through Blynk.Air (Blynk's MQTT API, "OTA": docs.blynk.io
# blynk.cloud/device-mqtt-api/ota.md): the server publishes downlink/ota/json
# {"url", "size", "ver", ...} after the device's info/mcu; the device fetches the package
# over HTTP(S) (response header x-sha256: base64 SHA256 of the package) and, once it runs the
# new app, says so with the next info/mcu's "ver" (platforms/blynk.py, from App.fw). Progress
# and failures go out as the "sys_ota" event, as Blynk.Edgent's OTA reports them
# (blynk-library Edgent OTA.h: Blynk.logEvent("sys_ota", ...)).
# The flash side (staging, checks, switch) is uplink.ota; the trial and rollback are
# uplink.ota_tb's, shared. The download goes straight to flash in 1 KB pieces through the
# Stage's one buffer; a dropped connection resumes with a Range request. docs/ota.md.
import asyncio
import gc

from uplink import https, log, ota, transport
from uplink.ota_tb import Updater as _Base

JOB = "ota.job"  # the package asked for, run at the next boot (at_boot); then its outcome
TRIES = 6  # connections per boot's download (each resumes where the last stopped)
BOOTS = 3  # boots a download may take when the network fails it, then it has failed
RETRY_S = 3
READ_MS = 15000  # no byte for this long: the connection is dead
REDIRECTS = 3
PIECE = 512  # = transport.RBUF: readexactly(n) up to it costs one n-byte bytes, no bigger block
EVENT = "sys_ota"


class Updater(_Base):
    def take(self, cmd):
        """A downlink/ota/json: noted; run() turns it into a job for the next boot."""
        self.announce(cmd.params)
        return None

    def announce(self, a):
        try:
            url, size = str(a["url"]), int(a["size"])
            ver = str(a.get("ver") or "")
        except (KeyError, ValueError, TypeError):
            log.warn("ota", "ota/json without url and size: ignored")
            return
        if ver and ver == self.running()[1]:
            return  # this version runs already
        q = url.find("?")
        # what the download is of (ota.DL): the URL's token query changes per notification
        want = {"title": "blynk", "version": ver, "size": size, "sha256": None,
                "src": url if q < 0 else url[:q]}
        job = ota._load(self.root + JOB) or {}
        if _same(job, want) and (job.get("failed") or (job.get("installed") and job.get("sha256") == self.bad)):
            # Blynk sends ota/json again after every info/mcu while the shipment lasts
            log.warn("ota", "%s failed before: not tried again" % (ver or url))
            return
        if self.want is None:
            self.want = dict(want, url=url)
            self.wake.set()

    async def run(self):
        await self.trial()
        job = ota._load(self.root + JOB) or {}
        if job.get("failed") and not job.get("told"):
            await self._connected()
            self.want = job
            self.say("FAILED", job["failed"])
            job["told"] = 1
            ota._save(self.root + JOB, job)
            self.want = None
        await self.wake.wait()
        want = self.want or {}
        if _same(job, want):
            want["boots"] = job.get("boots", 0)  # boots the network failed it count on
        ota._save(self.root + JOB, want)
        t = self._tell("DOWNLOADING")
        if t is not None:
            await t  # sent before the reset
        log.info("ota", "the download runs at the next boot, before the cloud session (the heap is whole then)")
        await asyncio.sleep_ms(500)
        self._reset()

    def say(self, state, error=None):
        t = self._tell(state, error)
        if t is not None:
            asyncio.create_task(t)

    def _tell(self, state, error=None):
        """The sys_ota event for `state`, as a coroutine to await or run; None if there is none."""
        if error:
            log.error("ota", "%s: %s" % (state, error))
        else:
            log.info("ota", "OTA %s" % state)
        ver = (self.want or {}).get("version") or "?"
        if state == "DOWNLOADING":
            text = "OTA started: %s" % ver
        elif state == "UPDATED":
            text = "Firmware updated to %s" % self.running()[1]
        elif state == "FAILED":
            text = "OTA failed: %s" % error
        else:
            return None  # Blynk events are counted: start, end and failure only
        c = self.app.client
        if c is None or not c.is_connected:
            return None
        pre = getattr(self.app.adapter, "_own", None) or ""
        return self._event(c, pre + "event/" + EVENT, text[:255].encode())

    async def _event(self, c, topic, payload):
        try:
            await c.publish(topic, payload, 1, False, False)
        except Exception as e:
            log.warn("ota", "sys_ota event not sent: %s" % e)


def _same(job, want):
    return all(job.get(k) == want[k] for k in ("src", "size", "version"))


async def at_boot(app, root="", sign=None, ca=None):
    """The job run() left before the reset: download, check, install, switch and reset. Runs
    before the MQTT client exists: the download's TLS session and the 1 KB buffer get a heap no
    session has fragmented (beside a running app, 128k had no 2 KB block left for it). A
    failure is written into the job, reported by run() once connected, and the app goes on."""
    job = ota._load(root + JOB)
    if not job or job.get("failed") or job.get("installed"):
        return
    want = {"title": "blynk", "version": job.get("version") or "", "size": job["size"], "sha256": None,
            "src": job["src"]}
    job["boots"] = job.get("boots", 0) + 1
    ota._save(root + JOB, job)
    st = ota.Stage(want, ota.BUF, root)  # its 1 KB buffer taken first
    try:
        await _download(app, st, want, job["url"], sign, ca)
        m = await st.verify(app.board.name)
        new = await st.install(m)
    except Exception as e:  # OtaError: the package's fault; OSError: the network's or the flash's
        if isinstance(e, ota.OtaError) or job["boots"] >= BOOTS:
            st.drop()
            job["failed"] = str(e)[:200]
        else:  # the network: the download resumes at the next boot (Range)
            log.exc("ota", "download, boot %d of %d" % (job["boots"], BOOTS), e)
        ota._save(root + JOB, job)
        log.error("ota", "download failed: %s" % e)
        transport._ctx.clear()  # the download's TLS context: the app's session makes its own
        return
    job["installed"] = 1
    job["sha256"] = want["sha256"]
    ota._save(root + JOB, job)
    st.switch(new)
    log.info("ota", "%s installed in %s: on trial after the reset" % (want["version"], new))
    app.board.reset()


async def _download(app, st, want, url, sign=None, ca=None):
    have = st.begin() * ota.BUF
    log.info("ota", "%s: %d bytes, from byte %d" % (want["version"] or "package", want["size"], have))
    tries = 0
    while have < want["size"]:
        try:
            have = await _get(app, st, want, url, have, sign, ca)
        except ota.OtaError:
            raise
        except (OSError, EOFError, asyncio.TimeoutError) as e:
            tries += 1
            if tries >= TRIES:
                raise OSError("download failed %d times, last: %s" % (tries, e))
            log.warn("ota", "download cut at byte %d (%s): resuming in %d s" % (st.have(), e, RETRY_S))
            have = st.have() // ota.BUF * ota.BUF  # a partial piece is not on flash
            gc.collect()
            await asyncio.sleep(RETRY_S)


async def _open(app, url, first, sign=None, ca=None, last=None):
    """(stream, status, headers, host) of a GET from byte `first` (to `last`), headers read.
    `sign(path)`: headers that authenticate the request (the token relay's); `ca`: the server's
    CA, by default the platform's (Blynk's broker and its file server share ISRG Root X1) as the
    same bytes the MQTT client holds, so transport's cached context is reused."""
    tls, host, port, path = https.parse_url(url)
    if ca is None:
        ca = getattr(app.client, "_ca", None) or app.cfg["platform"].get("ca")
    ctx = transport.tls_context(ca) if tls else None
    s = await transport.open_tcp(host, port, ssl_ctx=ctx, server_hostname=host, timeout_ms=READ_MS)
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


async def _get(app, st, want, url, have, sign=None, ca=None):
    """One connection: GET from byte `have` (Range), appended to the Stage 1 KB at a time.
    Returns the bytes on flash when the connection ends."""
    for _ in range(REDIRECTS + 1):
        s, status, hd, host = await _open(app, url, have, sign, ca)
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
    line = await https._line(s)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise OSError("not an HTTP answer")
    status = int(parts[1])
    hd = {}
    while True:
        line = await https._line(s, 600)  # a redirect's Location carries a long signed URL
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
