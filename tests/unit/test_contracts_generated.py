"""The generated Python code of the Leyline contracts matches the .proto (run `make proto` when this fails).

Compared by content, not by text: the serialized descriptor in leyline_pb2.py and the declarations in the .pyi.
The generator's version lines (and the import block of the stubs) change with each grpcio-tools release, so a
text comparison would fail a fresh clone that merely resolved a newer generator.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from esper.proto.generate import ENUMS, PROTO_DIR, generate

_DESCRIPTOR = re.compile(rb"AddSerializedFile\((b'.*?')\)\n")


def _descriptor(path: Path) -> bytes:
    found = _DESCRIPTOR.search(path.read_bytes())
    assert found is not None, f"{path.name} has no serialized descriptor"
    return bytes(ast.literal_eval(found.group(1).decode("ascii")))


def _declarations(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith(("import ", "from "))]


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    generate(tmp_path)
    assert _descriptor(tmp_path / "leyline_pb2.py") == _descriptor(PROTO_DIR / "leyline_pb2.py"), (
        "proto/leyline_pb2.py is stale: run `make proto`"
    )
    assert _declarations(tmp_path / "leyline_pb2.pyi") == _declarations(PROTO_DIR / "leyline_pb2.pyi"), (
        "proto/leyline_pb2.pyi is stale: run `make proto`"
    )
    assert (tmp_path / ENUMS).read_text() == (PROTO_DIR / ENUMS).read_text(), (
        "proto/enums.py is stale: run `make proto`"
    )


def test_the_python_enums_are_the_contracts() -> None:
    from esper.proto import leyline_pb2 as pb
    from esper.proto.enums import CircuitState, SeedStage

    for enum, wrapper, prefix in ((SeedStage, pb.SeedStage, "SEED_"), (CircuitState, pb.CircuitState, "CIRCUIT_")):
        wire = {name.removeprefix(prefix): number for name, number in wrapper.items() if number}
        assert {m.name: m.value for m in enum} == wire
