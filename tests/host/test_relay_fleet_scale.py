"""`uplink relay` for a fleet of thousands of devices: the fleet file and secret store are read
in proportion to the fleet, not to its square (the secrets file is parsed once, not once per
lookup), and every device gets its own key and, with a per-device password, its own source."""

from __future__ import annotations

import json

from host_tools import tokens_cli
from host_tools.fleet import load_fleet
from host_tools.secrets import SecretStore

N = 2000


def test_build_relay_for_thousands_of_devices_parses_the_secrets_once(tmp_path, monkeypatch):
    lines = ['[relay]', 'url = "https://relay.lan:8443"', 'hosts = ["relay.lan"]', '']
    secrets_ = {}
    for i in range(N):
        lines += [f'[devices.d{i}.platform]', 'kind = "biotz"', 'transport = "http"', f'device_id = "d{i}"',
                  'customer_id = "c"', 'credentials = "relay"', f'[devices.d{i}.platform.oidc]',
                  f'username = "d{i}@devices.example"', f'password = "secret:pw_{i}"', '']
        secrets_[f"pw_{i}"] = f"password-{i}"
        secrets_[f"relay-key.d{i}"] = f"{i:064x}"
    (tmp_path / "fleet.toml").write_text("\n".join(lines))
    sf = tmp_path / "secrets.json"
    sf.write_text(json.dumps(secrets_))
    sf.chmod(0o600)
    monkeypatch.setenv("UPLINK_STATE_DIR", str(tmp_path / "state"))
    store = SecretStore(sf, use_keyring=False, env={})
    parsed = []
    real = SecretStore._read_json

    def counting(self, path, *, private):
        if path == sf:
            parsed.append(1)
        return real(self, path, private=private)

    monkeypatch.setattr(SecretStore, "_read_json", counting)
    relay = tokens_cli.build_relay(load_fleet(tmp_path / "fleet.toml"), store)
    assert len(relay.devices) == N
    assert relay.devices["d7"].key == f"{7:064x}"
    assert len({id(d.source) for d in relay.devices.values()}) == N  # one credential each
    # the state key was created once (one write), the file parsed again only after that write
    assert len(parsed) <= 3, len(parsed)


def test_relay_table_refuses_a_password_in_the_redis_settings(tmp_path):
    import pytest

    from host_tools.fleet import FleetError

    base = '[relay]\nurl = "https://relay.lan:8443"\n'
    for bad, says in (('redis = "redis://:hunter2@10.0.0.5:6379/0"', "redis_password"),
                      ('redis_password = "hunter2"', "secret:NAME"),
                      ('trusted_proxies = ["10.0.0.300"]', "not an IP address")):
        (tmp_path / "fleet.toml").write_text(base + bad + "\n")
        with pytest.raises(FleetError) as e:
            load_fleet(tmp_path / "fleet.toml")
        assert says in str(e.value) and "hunter2" not in str(e.value), str(e.value)
