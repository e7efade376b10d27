# What the device does with a Command from a downlink. The built-in ones live here; anything
# else goes to user.py's handle(cmd), and a platform reply carries the result back.
import asyncio

from uplink import log

# Notifications the platforms turn into commands on every attribute change or answer: a
# user.py without a handler for them is normal, not an error.
NOTICES = ("attributes", "firmware", "rpc_answer", "set_time", "watch")
QUEUE = 8  # downlinks waiting for the handler; more are refused, not buffered


class Commands:
    """The one queue every cloud's commands wait in; each is answered through its own cloud."""

    def __init__(self, app):
        self.app = app
        self.queue = []
        self.ready = asyncio.Event()

    def put(self, cmd):
        if len(self.queue) >= QUEUE:
            log.warn("downlink", "command queue full: %s refused" % cmd.name)
            return
        self.queue.append(cmd)
        self.ready.set()

    async def run(self):
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.queue:
                cmd = self.queue.pop(0)
                try:
                    result = await execute(self.app, cmd)
                except Exception as e:
                    log.warn("cmd", "%s failed: %s" % (cmd.name, e))
                    result = {"error": str(e)}
                else:  # a D line: off with device.console "info"
                    log.cmd(cmd.name if cmd.device is None else "%s %s" % (cmd.device, cmd.name), cmd.params, result)
                await self.reply(cmd, result)

    async def reply(self, cmd, result):
        try:
            s = self.app.session_of(cmd)
            r = s.adapter.reply(cmd, result)
            if r is not None:
                await s.client.publish(r[0], r[1], qos=0)
        except Exception as e:
            log.warn("cmd", "reply to %s not sent: %s" % (cmd.name, e))


def _interval(params):
    v = params.get("interval_s", params.get("value")) if isinstance(params, dict) else params
    try:
        v = int(v)
    except (TypeError, ValueError):
        raise ValueError("set_interval needs a whole number of seconds, got %r" % (v,))
    if not 1 <= v <= 86400:
        raise ValueError("set_interval: %d s is outside 1..86400" % v)
    return v


async def execute(app, cmd):
    """Run one command; return the result to reply with (None for no reply)."""
    name = cmd.name
    if name == "ping":
        return {"pong": True}
    if name == "status":
        return app.telemetry.health()
    if name == "set_interval":
        t = app.telemetry
        t.interval_s = _interval(cmd.params)
        t.wake.set()
        log.info("cmd", "telemetry interval now %d s" % t.interval_s)
        return {"interval_s": t.interval_s}
    if name == "reboot":
        log.warn("cmd", "reboot requested by the cloud")
        asyncio.create_task(app.reboot_soon())
        return {"rebooting": True}
    if name == "redirect":
        url = cmd.params.get("url") if isinstance(cmd.params, dict) else None
        if not url:
            raise ValueError("redirect without a url")
        log.warn("cmd", "redirected to %s" % url)
        client = app.session_of(cmd).client  # the cloud that said so (several: uplink.sessions)
        client.set_url(url)
        await client.reconnect()
        return None
    if name == "set_time" and app.clock.set_from_cloud(cmd.params.get("ms", 0)):
        log.info("clock", "time taken from the cloud until SNTP answers")
    handler = getattr(app.user, "handle", None)
    if handler is None:
        if name in NOTICES:
            return None
        raise ValueError("unknown command %r" % name)
    try:
        r = handler(cmd)
        if r is not None and hasattr(r, "send"):
            r = await r
    except ValueError:  # handle()'s way to refuse a command (or a notice it does not take)
        if name in NOTICES:  # user.py handles other commands, not this notice
            return None
        raise
    except Exception as e:  # a bug in handle(): where it is, once, then counted
        log.user_exc("user", "handle(%s) failed" % name, e)
        raise
    return r
