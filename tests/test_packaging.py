"""The built wheel installs one namespace, esper.*, and nothing generic at the top of site-packages."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "esper",
    "esper.proto",
    "esper.streams",
    "esper.streams.local",
    "esper.projections",
    "esper.compiler",
    "esper.compiler.wal",
    "esper.compiler.artifacts",
    "esper.compiler.ir",
    "esper.compiler.service",
    "esper.safety",
]
GENERIC = {"cli", "proto", "streams", "projections", "compiler", "safety", "tests", "bench"}


def test_wheel_installs_only_the_esper_namespace(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(dist.glob("esper_on_kafka-*.whl"))

    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    fresh_python = fresh / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(fresh_python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = Path(
        subprocess.run(
            [str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )

    top_level = {
        p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".pth")) and p.name != "_virtualenv.py"
    }
    assert "esper" in top_level
    assert not top_level & GENERIC, f"generic names installed: {top_level & GENERIC}"

    # Dependencies come from this environment; the package itself must come from the wheel.
    probe = "; ".join(
        [f"import {name}" for name in SUBPACKAGES]
        + [
            "import esper.cli, esper.streams.envelope, esper.proto.leyline_pb2",
            "mods = (esper, esper.streams, esper.safety, esper.cli)",
            f"assert all(m.__file__.startswith({str(site)!r}) for m in mods)",
        ]
    )
    deps = sysconfig.get_path("purelib")
    subprocess.run(
        [str(fresh_python), "-c", probe],
        check=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"},
    )
    help_text = subprocess.run(
        [str(fresh / "bin" / "esper"), "--help"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "broker" in help_text and "topics" in help_text
    assert (site / "esper" / "proto" / "leyline.proto").exists()
    # test doubles (the simulated filesystem, the remembering sink) stay with the tests
    shipped = "\n".join(p.read_text() for p in (site / "esper").rglob("*.py"))
    for double in ("class SimFs", "class FaultFs", "class MemorySink"):
        assert double not in shipped, double


def test_every_command_has_help() -> None:
    from typer.main import get_command

    from esper.cli import app

    root = get_command(app)
    paths: list[list[str]] = []

    def walk(cmd: object, prefix: list[str]) -> None:
        paths.append(prefix)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(root, [])
    assert len(paths) > 8
    for path in paths:
        done = subprocess.run(
            [sys.executable, "-m", "esper.cli", *path, "--help"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (path, done.stderr)
        assert "Usage" in done.stdout
