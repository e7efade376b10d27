"""Secrets: keyring, then environment, then a 0600 file; headless machines without a keyring."""

from __future__ import annotations

import json
import stat

import pytest
from keyring.backends import fail

from host_tools.secrets import MissingSecret, SecretError, SecretStore, env_name
from tests.host.uplink_helpers import BrokenKeyring, Env, MemKeyring


def store(tmp_path, backend=None, env=None, use_keyring=True):
    return SecretStore(tmp_path / "s" / "secrets.json", keyring_backend=backend,
                       use_keyring=use_keyring, env=env if env is not None else {})


def test_order_keyring_then_env_then_file(tmp_path):
    kr = MemKeyring()
    s = store(tmp_path, kr, env={})
    s.set("a", "from-file", backend="file")
    assert s.get("a") == "from-file" and s.where("a") == "file"
    s.env = {env_name("a"): "from-env"}
    assert s.get("a") == "from-env" and s.where("a") == "env"
    kr.set_password("uplink", "a", "from-keyring")
    assert s.get("a") == "from-keyring" and s.where("a") == "keyring"
    assert s.resolve("secret:a") == "from-keyring"
    assert s.resolve("plain") == "plain"


def test_env_name():
    assert env_name("gh-1.token") == "UPLINK_SECRET_GH_1_TOKEN"


def test_set_goes_to_the_keyring_when_there_is_one_and_names_are_listed(tmp_path):
    kr = MemKeyring()
    s = store(tmp_path, kr)
    assert s.set("tok", "v1") == "keyring"
    assert kr.data[("uplink", "tok")] == "v1"
    assert not (tmp_path / "s" / "secrets.json").exists() or "v1" not in (tmp_path / "s" / "secrets.json").read_text()
    # the index holds names only
    index = (tmp_path / "s" / "secrets.keyring-index.json").read_text()
    assert "tok" in index and "v1" not in index
    s.set("f", "v2", backend="file")
    assert s.names() == ["f", "tok"]
    assert s.delete("tok") == ["keyring"]
    assert s.names() == ["f"]


@pytest.mark.parametrize("backend", [BrokenKeyring(), fail.Keyring()])
def test_a_broken_or_absent_keyring_falls_back_to_the_file(tmp_path, backend):
    s = store(tmp_path, backend)
    assert s.set("tok", "v1") == "file"
    assert s.keyring_available is False and s.keyring_problem
    assert s.get("tok") == "v1"
    assert s.names() == ["tok"]
    assert s.delete("tok") == ["file"]


def test_keyring_only_set_fails_clearly_without_a_keyring(tmp_path):
    s = store(tmp_path, BrokenKeyring())
    with pytest.raises(SecretError, match="--file"):
        s.set("tok", "v1", backend="keyring")


def test_the_file_is_0600_and_refused_when_others_can_read_it(tmp_path):
    s = store(tmp_path, use_keyring=False)
    s.set("tok", "v1")
    f = tmp_path / "s" / "secrets.json"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert json.loads(f.read_text()) == {"tok": "v1"}
    f.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        s.get("tok")


def test_missing_secret_names_it_and_says_how_to_set_it(tmp_path):
    s = store(tmp_path, use_keyring=False)
    with pytest.raises(MissingSecret) as e:
        s.resolve("secret:gh1_token", context="device 'gh': platform.token")
    msg = str(e.value)
    assert "gh1_token" in msg and "uplink secrets set gh1_token" in msg and "UPLINK_SECRET_GH1_TOKEN" in msg
    assert "platform.token" in msg


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(SecretError):
        store(tmp_path, use_keyring=False).set("no spaces", "x")


def test_cli_set_list_rm(tmp_path):
    env = Env(tmp_path, '[devices.d.platform]\nkind = "blynk"\ntoken = "secret:blynk_tok"\n')
    r = env.run("secrets", "set", "blynk_tok", input="s3cr3t-value\n")
    assert r.code == 0, r.output
    assert "s3cr3t-value" not in r.output
    assert stat.S_IMODE(env.secrets_file.stat().st_mode) == 0o600
    r = env.run("secrets", "list", "--json")
    assert r.code == 0
    data = json.loads(r.stdout)
    assert data["secrets"] == [{"name": "blynk_tok", "stored": "file", "used_by": ["d:platform.token"]}]
    assert "s3cr3t-value" not in r.output
    r = env.run("secrets", "rm", "blynk_tok")
    assert r.code == 0
    r = env.run("secrets", "rm", "blynk_tok")
    assert r.code == 4
    r = env.run("secrets", "list", "--json")
    assert json.loads(r.stdout)["secrets"][0]["stored"] is None


def test_cli_env_secret_is_used(tmp_path):
    env = Env(tmp_path, '[devices.d.platform]\nkind = "blynk"\ntoken = "secret:blynk_tok"\n')
    r = env.run("validate", env={"UPLINK_SECRET_BLYNK_TOK": "xyz"})
    assert r.code == 0, r.output
