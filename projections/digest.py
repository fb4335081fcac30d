"""Digests of projection tables: one sha256 per table, over its canonical JSON, so that a live table and a replayed
one can be compared with one line each (`esper replay` prints them)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_json", "digests", "table_digest"]


def canonical_json(value: Any) -> bytes:
    """The one byte string of a JSON-able value: sorted keys, no whitespace, UTF-8, non-finite floats refused (the
    reducers store those as text)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def table_digest(table: Mapping[str, Any]) -> str:
    """sha256 (hex) of a table's canonical JSON: the same for the same keys and states, whatever the order in which
    they were inserted."""
    return hashlib.sha256(canonical_json(dict(table))).hexdigest()


def digests(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """table name -> table_digest, for every table given."""
    return {name: table_digest(table) for name, table in sorted(tables.items())}
