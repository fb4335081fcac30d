"""Typed errors of the compiler package (Tezzeret). Other modules of the package add theirs here."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esper.compiler.wal_scan import RecoveryReport

__all__ = ["CompilerError", "WalClosedError", "WalCorruptionError", "WalError", "WalFatalError", "WalIOError"]


class CompilerError(Exception):
    """Base of every error raised by esper.compiler."""


class WalError(CompilerError):
    """Base of the write-ahead log's errors."""


class WalIOError(WalError):
    """A write, sync or allocation call failed (EIO, ENOSPC, short write): the segment is dead, nothing was acked."""


class WalFatalError(WalError):
    """The writer failed earlier and refuses further work; reopen the WAL, which runs full recovery."""


class WalClosedError(WalError):
    """The WAL was closed."""


class WalCorruptionError(WalError):
    """Recovery found corruption (not a torn tail); the report says where. The writer refuses to open."""

    def __init__(self, report: RecoveryReport) -> None:
        self.report = report
        c = report.corruption
        where = f"{c.segment}@{c.offset}: {c.reason}" if c else "?"
        super().__init__(f"WAL corruption at {where}")
