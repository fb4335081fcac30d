"""Digests of projection tables: one sha256 per table, over its canonical JSON, so that a live table and a replayed
one can be compared with one line each (`esper replay` prints them)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["CanonicalTable", "canonical_json", "digest_of_entries", "digests", "table_digest"]


def canonical_json(value: Any) -> bytes:
    """The one byte string of a JSON-able value: sorted keys, no whitespace, UTF-8, non-finite floats refused (the
    reducers store those as text)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@runtime_checkable
class CanonicalTable(Protocol):
    """A table that holds its values as canonical JSON already (RocksTable): digested from its bytes, without
    decoding a state."""

    def canonical_entries(self) -> Iterable[tuple[str, bytes]]:
        """(key, canonical_json(state)) in key order."""
        ...


def digest_of_entries(entries: Iterable[tuple[str, bytes]]) -> str:
    """sha256 (hex) of the canonical JSON object whose members are `entries` ((key, canonical value), in key order),
    hashed as they come: a table is never held as one string."""
    h = hashlib.sha256(b"{")
    for i, (key, value) in enumerate(entries):
        h.update(b"," if i else b"")
        h.update(canonical_json(key))
        h.update(b":")
        h.update(value)
    h.update(b"}")
    return h.hexdigest()


def table_digest(table: Mapping[str, Any] | CanonicalTable) -> str:
    """sha256 (hex) of a table's canonical JSON, `canonical_json(dict(table))`: the same for the same keys and
    states, whatever the order in which they were inserted."""
    if isinstance(table, CanonicalTable):
        return digest_of_entries(table.canonical_entries())
    return digest_of_entries((key, canonical_json(table[key])) for key in sorted(table))


def digests(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """table name -> table_digest, for every table given."""
    return {name: table_digest(table) for name, table in sorted(tables.items())}
