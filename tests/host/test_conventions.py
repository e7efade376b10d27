"""What people expect from a command like ESPHome's or mpremote's: shell completion, a `clean`
that removes what holds secrets, global options wherever they are typed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.host.uplink_helpers import Env

FLEET = """
[devices.alpha]
board = "host"
[devices.alpha.platform]
kind = "thingsboard"
url = "mqtt://127.0.0.1:1"
token = "secret:tok"

[devices.beta]
board = "host"
[devices.beta.platform]
kind = "thingsboard"
url = "mqtt://127.0.0.1:1"
token = "secret:tok"
"""
TOKEN = "clean-me-7731"


def env_for(tmp_path) -> Env:
    env = Env(tmp_path, FLEET)
    env.env["UPLINK_SECRET_TOK"] = TOKEN
    return env


def uplink_exe() -> str:
    exe = Path(sys.executable).parent / "uplink"
    if not exe.exists():
        pytest.skip("the `uplink` script is not installed in this virtualenv")
    return str(exe)


def complete(env: Env, words: str) -> list[str]:
    """What bash's completion gets from `uplink` for the command line `words` (cursor at its end)."""
    e = {**os.environ, **env.env, "_UPLINK_COMPLETE": "complete_bash", "COMP_WORDS": words,
         "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    r = subprocess.run([uplink_exe()], env=e, capture_output=True, text=True, timeout=60, cwd=env.root)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_shell_completion_installs_and_completes_commands_and_devices(tmp_path):
    env = env_for(tmp_path)
    r = env.run("--show-completion", "bash")
    assert r.code == 0, r.output
    assert "_uplink_completion" in r.stdout and "complete " in r.stdout
    assert "--install-completion" in env.run("--help").stdout
    assert complete(env, "uplink va") == ["validate"]
    assert complete(env, "uplink sim ") == ["alpha", "beta"]
    assert complete(env, "uplink deploy b") == ["beta"]


def test_clean_removes_the_build_directory_with_its_rendered_secrets(tmp_path):
    env = env_for(tmp_path)
    assert env.run("provision", "alpha").code == 0
    config = env.build / "devices" / "alpha" / "config.json"
    assert TOKEN in config.read_text()  # what clean is for: the rendered config holds the token
    r = env.run("clean", "--dry-run")
    assert r.code == 0 and config.exists(), r.output
    assert f"would remove {env.build} (" in r.stderr
    r = env.run("clean")
    assert r.code == 0, r.output
    assert not env.build.exists()
    assert f"removed {env.build} (" in r.stderr and TOKEN not in r.output
    r = env.run("clean")
    assert r.code == 0 and f"nothing to clean: {env.build} does not exist" in r.stderr


def test_clean_leaves_a_build_directory_that_holds_more_than_uplinks(tmp_path):
    env = env_for(tmp_path)
    env.build.mkdir()
    (env.build / "thesis.tex").write_text("mine")
    r = env.run("clean")
    assert r.code == 2, r.output
    assert f"error: {env.build} holds what uplink did not write (thesis.tex): not removing it" in r.stderr
    assert (env.build / "thesis.tex").read_text() == "mine"


def test_global_options_work_after_the_command(tmp_path):
    env = env_for(tmp_path)
    other = tmp_path / "elsewhere.toml"
    other.write_text(FLEET.replace("alpha", "gamma"))
    for args in (["validate", "-f", str(other)], ["validate", f"--fleet={other}"], ["validate", f"-f{other}"],
                 ["-q", "validate", "-f", str(other), "-v"]):
        r = env.run(*args)
        assert r.code == 0, (args, r.output)
        if "-q" not in args:
            assert "2 devices OK: beta, gamma" in r.stderr, (args, r.output)
    r = env.run("config", "show", "gamma", "--json", "-f", str(other))
    assert r.code == 0 and '"name": "gamma"' in r.stdout, r.output
    r = env.run("validate", "--json", "-q", "-f", str(other))
    assert r.code == 0 and r.stderr == "" and '"ok": true' in r.stdout, r.output
    r = env.run("validate", "-vv", "--secrets-file", str(tmp_path / "s.json"), "--no-keyring")
    assert r.code == 0, r.output
    # a command's own option of the same name is the command's: `sim -q` is sim's quiet
    r = env.run("sim", "nosuch", "-q", "-f", str(other))
    assert r.code == 3 and "no device 'nosuch'" in r.stderr and "gamma" in r.stderr, r.output
    r = env.run("validate", "-f")
    assert r.code == 2 and "-f" in r.output, r.output


def test_no_help_sends_a_pip_user_to_a_file_of_the_repository(tmp_path):
    import re

    from tests.host.test_cli import all_command_paths

    env = env_for(tmp_path)
    for path in all_command_paths():
        out = env.run(*path, "--help").stdout
        assert not re.search(r"docs/\w+\.md|make setup", out), (path, out)
