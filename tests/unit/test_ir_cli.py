"""`esper blueprint validate`: exit 0 with the inferred figures, exit 1 with every problem by node id."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from esper.cli import app
from tests.ir_samples import EXAMPLES

runner = CliRunner()


def test_a_valid_blueprint_prints_every_node_and_the_totals() -> None:
    done = runner.invoke(app, ["blueprint", "validate", str(EXAMPLES / "attention.yaml"), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["ok"] is True
    assert [n["id"] for n in report["nodes"]][:4] == ["norm", "tokens", "embed", "attn"]
    assert report["nodes"][3]["shape"] == [-1, 8, 32]
    assert report["parameters"] == sum(n["parameters"] for n in report["nodes"])
    assert report["flops_per_sample"] > 0 and report["activation_bytes_per_sample"] > 0
    assert len(report["sha256"]) == 64
    text = runner.invoke(app, ["blueprint", "validate", str(EXAMPLES / "attention.yaml")])
    assert text.exit_code == 0
    assert "self_attention" in text.output and report["sha256"] in text.output


def test_an_invalid_blueprint_lists_every_problem_by_node(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "input: {shape: [-1, 64]}\n"
        "nodes:\n"
        "  - {id: a, op: linear, inputs: [input]}\n"
        "  - {id: b, op: eval, inputs: [a]}\n"
        "  - {id: c, op: add, inputs: [b, ghost]}\n"
        "output: c\n"
    )
    done = runner.invoke(app, ["blueprint", "validate", str(bad), "--json"])
    assert done.exit_code == 1
    report = json.loads(done.output)
    assert report["ok"] is False
    assert {p["node"] for p in report["problems"]} == {"a", "b", "c"}
    text = runner.invoke(app, ["blueprint", "validate", str(bad)])
    assert text.exit_code == 1
    assert "3 problem(s)" in text.output and "ghost" in text.output


def test_the_seed_slot_rule_is_an_option(tmp_path: Path) -> None:
    wide = tmp_path / "wide.json"
    wide.write_text(
        json.dumps(
            {
                "input": {"shape": [-1, 64]},
                "nodes": [{"id": "fc", "op": "linear", "inputs": ["input"], "attrs": {"out_features": 8}}],
                "output": "fc",
            }
        )
    )
    assert runner.invoke(app, ["blueprint", "validate", str(wide)]).exit_code == 1
    assert runner.invoke(app, ["blueprint", "validate", str(wide), "--any-shape"]).exit_code == 0


def test_unreadable_files_exit_1(tmp_path: Path) -> None:
    garbage = tmp_path / "g.yaml"
    garbage.write_bytes(b"\xff\xfe: [")
    for path in (garbage, tmp_path / "missing.yaml"):
        done = runner.invoke(app, ["blueprint", "validate", str(path), "--json"])
        assert done.exit_code == 1
        assert json.loads(done.output)["problems"][0]["node"] == str(path)
