"""Where artifacts live: the store interface, and its local-directory backend.

A store holds bytes by (artifact id, file name) and knows nothing of manifests or signatures: trust is
esper.compiler.artifacts.verify's job, so a shared backend (an object store) only has to move bytes.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import urllib.parse
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from esper.compiler.artifacts.address import check_artifact_id
from esper.compiler.artifacts.durable import write_new_file
from esper.compiler.exceptions import ArtifactNotFoundError, UnsupportedStoreError
from esper.compiler.fsio import FileSystem, OsFs

__all__ = ["ArtifactStore", "LocalStore", "NotRegularFileError", "open_store"]


class NotRegularFileError(OSError):
    """A name in an artifact that is not a regular file (a link, a FIFO, a device)."""


class ArtifactStore(Protocol):
    """Bytes by artifact id and file name. Writes are all-or-nothing per artifact; an id is written once."""

    def uri(self, artifact_id: str) -> str: ...

    def exists(self, artifact_id: str) -> bool: ...

    def ids(self) -> list[str]: ...

    def names(self, artifact_id: str) -> list[str]:
        """Every file of the artifact, relative names ("compiled/x.bin"), sorted; ArtifactNotFoundError if none."""
        ...

    def read(self, artifact_id: str, name: str, limit: int) -> bytes:
        """The file's bytes, at most `limit` + 1 of them (an oversized file shows without being read whole);
        FileNotFoundError, or NotRegularFileError for what is not a regular file."""
        ...

    def put(self, artifact_id: str, files: Mapping[str, bytes]) -> bool:
        """Store the artifact atomically; False (nothing written) when the id is already there."""
        ...


class LocalStore:
    """`<root>/<artifact_id>/` per artifact. A new one is written into `<root>/.tmp-<uuid>/`, every file and folder
    fsynced, renamed to its id and the root fsynced: a crash leaves the whole artifact or none of it (and at worst
    a `.tmp-*` folder, which no listing shows)."""

    def __init__(self, root: Path | str, fs: FileSystem | None = None) -> None:
        self.root = Path(root)
        self._fs: FileSystem = fs or OsFs()

    def _dir(self, artifact_id: str) -> Path:
        return self.root / check_artifact_id(artifact_id)

    def uri(self, artifact_id: str) -> str:
        return self._dir(artifact_id).resolve().as_uri()

    def exists(self, artifact_id: str) -> bool:
        return self._dir(artifact_id).is_dir()

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and p.is_dir())

    def names(self, artifact_id: str) -> list[str]:
        top = self._dir(artifact_id)
        if not top.is_dir():
            raise ArtifactNotFoundError(f"no artifact {artifact_id} in {self.root}")
        out: list[str] = []
        for folder, dirs, files in os.walk(top):  # a link to a folder is listed, never followed
            rel = Path(folder).relative_to(top)
            links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
            out += [(rel / name).as_posix() for name in files + links]
        return sorted(out)

    def read(self, artifact_id: str, name: str, limit: int) -> bytes:
        path = self._dir(artifact_id) / name
        try:  # O_NONBLOCK: a FIFO planted under a listed name must not hang the reader
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise NotRegularFileError(e.errno, "a symbolic link", str(path)) from e
            raise
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotRegularFileError(errno.EINVAL, "not a regular file", str(path))
            return f.read(limit + 1)

    def put(self, artifact_id: str, files: Mapping[str, bytes]) -> bool:
        final = self._dir(artifact_id)
        if final.exists():
            return False
        self._fs.mkdir(str(self.root))
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            folders = {tmp} | {(tmp / name).parent for name in files}
            for folder in sorted(folders):
                self._fs.mkdir(str(folder))
            for name, data in files.items():
                write_new_file(self._fs, str(tmp / name), data)
            for folder in sorted(folders, reverse=True):  # children first: each entry durable before its parent's
                self._fs.fsync_dir(str(folder))
            try:
                self._fs.rename(str(tmp), str(final))
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another writer got there first: same id, same bytes
                    return False
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._fs.fsync_dir(str(self.root))
        return True


def open_store(uri: str) -> ArtifactStore:
    """The store at `uri`: a path, or a `file://` URI of an absolute path (a LocalStore's root as `Path.as_uri`
    writes it, the parent of what its `uri(id)` gives). UnsupportedStoreError for any other scheme (s3://, gs://):
    only file stores are offered in this build."""
    parts = urllib.parse.urlsplit(uri)
    if not uri or parts.scheme not in ("", "file"):
        raise UnsupportedStoreError(f"cannot open the store {uri!r}: only file stores are offered in this build")
    if parts.scheme == "":
        return LocalStore(uri)
    path = urllib.parse.unquote(parts.path)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment or not path.startswith("/"):
        raise UnsupportedStoreError(f"not a file URI of a local absolute path: {uri!r}")
    return LocalStore(path)
