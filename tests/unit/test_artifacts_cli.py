"""`esper keys generate` and `esper artifact verify|inspect`, through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from esper.cli import app
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.publish import publish
from esper.compiler.artifacts.store import LocalStore
from tests.sinks import MemorySink
from tests.unit.test_artifacts import make_build


def test_keys_generate_uses_the_settings_and_verify_inspect_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESPER_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ESPER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ESPER_KEYS_DIR", raising=False)
    runner = CliRunner()
    out = runner.invoke(app, ["keys", "generate"])
    assert out.exit_code == 0, out.output
    key_id = json.loads(out.stdout)["key_id"]
    ring = KeyRing(tmp_path / "home" / "keys")  # the default: <home>/keys
    assert ring.signing_key_id() == key_id

    store = LocalStore(tmp_path / "store")
    aid = publish(store, make_build(), ring, MemorySink()).artifact_id
    args = [aid, "--store", str(store.root)]
    out = runner.invoke(app, ["artifact", "verify", *args])
    assert out.exit_code == 0 and json.loads(out.stdout)["ok"] is True
    out = runner.invoke(app, ["artifact", "inspect", *args])
    shown = json.loads(out.stdout)
    assert out.exit_code == 0 and shown["verified"] is True
    assert shown["kernel_artifact"]["artifact_id"] == aid and shown["manifest"]["key_id"] == key_id

    (store.root / aid / "ir.pb").write_bytes(b"tampered")
    out = runner.invoke(app, ["artifact", "verify", *args])
    report = json.loads(out.stdout)
    assert out.exit_code == 1 and report["ok"] is False and report["refusal"] == "HashMismatchError"
    assert report["safety_event"][0]["subsystem"] == "tezzeret"
    out = runner.invoke(app, ["artifact", "inspect", *args])
    shown = json.loads(out.stdout)
    assert out.exit_code == 0 and shown["verified"] is False and shown["manifest_untrusted"]["artifact_id"] == aid

    assert runner.invoke(app, ["artifact", "verify", "0" * 64, "--store", str(store.root)]).exit_code == 2
    assert runner.invoke(app, ["artifact", "verify", "../etc", "--store", str(store.root)]).exit_code == 2

    other = tmp_path / "other-ring"  # --keys over the setting, and a ring without the key refuses
    out = runner.invoke(app, ["artifact", "verify", *args[:1], "--store", str(store.root), "--keys", str(other)])
    assert out.exit_code == 1

    out = runner.invoke(app, ["keys", "retire", key_id])
    assert out.exit_code == 0 and json.loads(runner.invoke(app, ["keys", "list"]).stdout)[0]["retired"] is True
    assert runner.invoke(app, ["keys", "retire", "f" * 16]).exit_code == 1
