"""Folders the relay and token code create are 0700 and key files 0600 even under `umask 000`
(where a plain mkdir would leave them world-writable)."""

from __future__ import annotations

import asyncio
import os
import stat

from tests.oidc_provider import OIDCProvider
from tests.relay_flood import RelayProcess, good_request


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_relay_process_under_umask_000_makes_private_state(tmp_path):
    provider = OIDCProvider(lifetime=300).start()
    state = tmp_path / "new" / "deeper" / "state"  # none of it exists yet
    relay = RelayProcess(provider, tmp_path, umask=0, state_dir=state).start()
    try:
        status, _, _ = asyncio.run(good_request(relay, relay.ssl_context(), local="127.0.0.1"))
        assert status == 200
    finally:
        relay.stop()
        provider.stop()
    for d in (tmp_path / "new", tmp_path / "new" / "deeper", state, state / "relay-pki"):
        assert mode(d) == 0o700, d
    for f in ("ca.key", "relay.key"):
        assert mode(state / "relay-pki" / f) == 0o600, f
    for f in ("ca.pem", "ca.der", "relay.pem"):  # public, but nobody else may swap them
        assert mode(state / "relay-pki" / f) == 0o644, f
    assert mode(relay.secrets) == 0o600  # the relay wrote the device key into it


def test_secret_store_and_bundle_folders_under_umask_000(tmp_path, umask000):
    from host_tools.provision import write_file
    from host_tools.secrets import SecretStore

    before = mode(tmp_path)
    store = SecretStore(tmp_path / "cfg" / "uplink" / "secrets.json", use_keyring=False, env={})
    store.set("relay-key.dev-1", "00" * 32)
    assert mode(tmp_path / "cfg") == 0o700 and mode(tmp_path / "cfg" / "uplink") == 0o700
    assert mode(tmp_path / "cfg" / "uplink" / "secrets.json") == 0o600

    bundle = tmp_path / "build" / "devices" / "dev-1"  # as `uplink provision` lays it out
    write_file(bundle / "config.json", b"{}", 0o600)
    for d in (tmp_path / "build", tmp_path / "build" / "devices", bundle):
        assert mode(d) == 0o700, d
    assert mode(tmp_path) == before  # folders that were there already are the user's


def test_existing_world_writable_state_dir_is_tightened(tmp_path, umask000):
    from host_tools import relay_pki

    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    pki = relay_pki.ensure_relay_pki(state, ["localhost"])
    assert mode(state) == 0o700 and mode(pki.dir) == 0o700
