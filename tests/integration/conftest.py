import pytest

from tests.integration.broker_profiles import E2E_USER, Cloud, ProfileProxy
from tests.integration.hostboard import HostBoard


@pytest.fixture
def env(broker, tmp_path):
    """A platform end-to-end setup: profile proxies in front of the `broker`, the test's
    cloud side, and host boards; all stopped after the test, newest first."""
    made = []

    class Env:
        def proxy(self, profile):
            p = ProfileProxy(profile, broker.ports["mqtt"]).start()
            made.append(p)
            return p

        def cloud(self):
            c = Cloud(broker.ports["mqtt"])
            made.append(c)
            return c

        def board(self, cfg, name="board", user_py=E2E_USER):
            b = HostBoard(tmp_path / name, cfg, user_py=user_py).start()
            made.append(b)
            return b

    yield Env()
    for m in reversed(made):
        (m.stop if hasattr(m, "stop") else m.close)()
