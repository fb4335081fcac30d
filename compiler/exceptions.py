"""Typed errors of the compiler package (Tezzeret). Other modules of the package add theirs here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from esper.proto.enums import FailureReason

if TYPE_CHECKING:
    from esper.compiler.wal.scan import RecoveryReport

__all__ = [
    "ArtifactError",
    "ArtifactNotFoundError",
    "ArtifactRefusedError",
    "BadSignatureError",
    "BlueprintError",
    "BlueprintLoadError",
    "BlueprintProblem",
    "BlueprintValidationError",
    "CompileFailedError",
    "CompilerError",
    "GraphBreakError",
    "HashMismatchError",
    "InvalidArtifactIdError",
    "InvalidLimitsError",
    "KeyRingError",
    "MalformedManifestError",
    "ManifestMismatchError",
    "MissingFileError",
    "RetiredKeyError",
    "SandboxClosedError",
    "SandboxError",
    "SandboxJobRejectedError",
    "TierCheckError",
    "TierError",
    "UnexpectedFileError",
    "UnknownKeyError",
    "UnsupportedStoreError",
    "WalClosedError",
    "WalCorruptionError",
    "WalError",
    "WalFatalError",
    "WalIOError",
]


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


class InvalidLimitsError(CompilerError, ValueError):
    """A ValidationLimits broke its own rules; `problems` lists each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid validation limits: " + "; ".join(self.problems))


class BlueprintProblem(NamedTuple):
    """One thing wrong with a blueprint: where (a node id, or `blueprint`, `input`, `output`, `metadata`, a file
    location) and what."""

    node: str
    problem: str


class BlueprintError(CompilerError):
    """Base of the blueprint errors; `problems` lists every problem found."""

    summary = "blueprint rejected"

    def __init__(self, problems: Sequence[BlueprintProblem], more: int = 0) -> None:
        self.problems = tuple(problems)
        self.more = more  # problems found past the reported ones
        lines = [f"{p.node}: {p.problem}" for p in self.problems]
        if more:
            lines.append(f"... and {more} more")
        super().__init__(f"{self.summary}:\n  " + "\n  ".join(lines))


class BlueprintLoadError(BlueprintError):
    """A blueprint file could not be read into a BlueprintIR."""

    summary = "blueprint file unreadable"


class BlueprintValidationError(BlueprintError):
    """A blueprint failed the security validator."""

    summary = "blueprint invalid"


class ArtifactError(CompilerError):
    """Base of the artifact store's, key ring's and verifier's errors."""


class InvalidArtifactIdError(ArtifactError, ValueError):
    """A string that is not an artifact id (64 lower-case hex digits) was given where one is needed."""


class ArtifactNotFoundError(ArtifactError):
    """The store holds no artifact with this id."""


class UnsupportedStoreError(ArtifactError, ValueError):
    """A store URI this build cannot open: only file stores (a path or a file:// URI) are offered."""


class KeyRingError(ArtifactError):
    """The key ring cannot do what was asked: no signing key, an unknown key id, an unreadable key file."""


class ArtifactRefusedError(ArtifactError):
    """An artifact failed verification: nothing of it was unpickled, imported or loaded. Subclasses say which
    check failed; each refusal is also reported as a safety event."""

    def __init__(self, artifact_id: str, reason: str) -> None:
        self.artifact_id = artifact_id
        self.reason = reason
        super().__init__(f"artifact {artifact_id} refused: {reason}")


class MalformedManifestError(ArtifactRefusedError):
    """The manifest is not the JSON document the store writes (unparseable, missing or mistyped fields)."""


class UnknownKeyError(ArtifactRefusedError):
    """The manifest names a key the key ring does not hold, or an algorithm other than Ed25519."""


class RetiredKeyError(ArtifactRefusedError):
    """The manifest was signed by a key the ring has retired: retired keys verify nothing."""


class BadSignatureError(ArtifactRefusedError):
    """The signature does not verify over the manifest's exact bytes."""


class ManifestMismatchError(ArtifactRefusedError):
    """A signed manifest that belongs elsewhere: its artifact id is not the directory's, or not the id recomputed
    from the IR, tier and reuse key it lists."""


class MissingFileError(ArtifactRefusedError):
    """A file the manifest lists (or the manifest or its signature) is absent."""


class UnexpectedFileError(ArtifactRefusedError):
    """The artifact holds a file the manifest does not list, or one that is not a regular file."""


class HashMismatchError(ArtifactRefusedError):
    """A file's size or sha256 differs from the manifest's."""


class SandboxError(CompilerError):
    """Base of the sandbox's errors. A worker's fault is never one of them: it is a typed outcome."""


class SandboxJobRejectedError(SandboxError, ValueError):
    """The caller asked for a job the sandbox refuses before any worker sees it: a function outside the
    allow-list, arguments that are not JSON, limits that are not positive."""


class SandboxClosedError(SandboxError):
    """The sandbox was closed."""


class TierError(CompilerError):
    """A module failed to compile, or to prove itself, at a tier."""


class GraphBreakError(TierError):
    """The module cannot be captured as one graph (fullgraph=True): the blueprint is refused, never run in pieces."""


class TierCheckError(TierError):
    """A compiled output or gradient differs from eager's beyond the tier's tolerance (or is not finite)."""


class CompileFailedError(CompilerError):
    """A sandboxed compile did not produce a proven module: `reason` is the worker's FailureReason, the message its
    traceback or the dead worker's last words."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        self.reason = reason
        super().__init__(f"compile failed ({reason.name}): {message}")
