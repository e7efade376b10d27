"""A fault-injecting TCP proxy for chaos tests: sits between the firmware and the broker.

It forwards bytes both ways and, on command, cuts every connection, cuts one in the middle
of a chunk (so an MQTT packet or a TLS record arrives half), stalls the traffic, delays it,
or refuses new connections. It runs its own asyncio loop in a thread; the methods are safe
to call from the test's thread.
"""

from __future__ import annotations

import asyncio
import random
import threading


class FaultProxy:
    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1", seed: int = 1):
        self.upstream = (host, upstream_port)
        self.host = host
        self.port = 0
        self.rng = random.Random(seed)
        self.cuts = 0
        self.connections = 0
        self.bytes = 0
        self._conns: set = set()
        self._delay = 0.0
        self._stalled: asyncio.Event | None = None
        self._refuse = False
        self._cut_mid = False
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self._refuse:
            w.close()
            return
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
        except OSError:
            w.close()
            return
        self.connections += 1
        pair = (w, uw)
        self._conns.add(pair)
        await asyncio.gather(self._pipe(r, uw, pair), self._pipe(ur, w, pair), return_exceptions=True)
        self._conns.discard(pair)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, pair) -> None:
        try:
            while True:
                data = await r.read(4096)
                if not data:
                    break
                await self._flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                if self._cut_mid and len(data) > 1:
                    self._cut_mid = False
                    w.write(data[: self.rng.randrange(1, len(data))])
                    await w.drain()
                    self._close(pair)
                    self.cuts += 1
                    break
                self.bytes += len(data)
                w.write(data)
                await w.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            self._close(pair)

    def _close(self, pair) -> None:
        for w in pair:
            try:
                w.transport.abort()  # RST, not a polite FIN: what a dropped link looks like
            except Exception:
                pass

    def _call(self, fn, *args) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    # -- faults --------------------------------------------------------------------------
    def cut_all(self) -> None:
        """Drop every open connection now."""

        def cut():
            for pair in list(self._conns):
                self._close(pair)
                self.cuts += 1

        self._call(cut)

    def cut_mid_chunk(self) -> None:
        """The next chunk in either direction is forwarded only in part, then the link drops."""
        self._cut_mid = True

    def stall(self, on: bool = True) -> None:
        """Hold all traffic (connections stay open): a dead link the client must detect."""
        self._call(self._flowing.clear if on else self._flowing.set)

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def refuse(self, on: bool = True) -> None:
        """New connections are closed at once (the broker looks down)."""
        self._refuse = on

    def random_fault(self) -> str:
        kind = self.rng.choice(["cut", "cut_mid"])
        (self.cut_all if kind == "cut" else self.cut_mid_chunk)()
        return kind

    def close(self) -> None:
        async def stop():
            self._server.close()
            for pair in list(self._conns):
                self._close(pair)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(stop()))
        self._thread.join(5)
