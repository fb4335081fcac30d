"""C3: power loss through a real FUSE layer (LazyFS-style, `lazyfs.py`), long matrix only (`make crash`).

Each run: a fresh backing directory, `lazyfs.py` mounts it (its own process, so the writer's crash does not end it),
the real `esper wal stress MOUNT/wal` appends through the mount, then at a random moment it is `kill -9`ed and the
FUSE layer takes a power cut (everything not fsynced, and every directory entry not made durable by a directory
fsync, is dropped; in half the runs a random subset of the unsynced 512-byte sectors reaches the disk instead:
torn and reordered writes). After unmounting, recovery runs on the BACKING directory: every acked LSN must be there,
intact, and no corrupted record accepted. A negative control first proves the layer really drops unsynced data.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wal_crash_harness import LONG, Result, publish

from esper.compiler.wal.cli import stress_payload_ok
from esper.compiler.wal.log import RecordType, recover

_NO_FUSE = [
    w for w, ok in (("/dev/fuse", os.path.exists("/dev/fuse")), ("fusermount3", shutil.which("fusermount3"))) if not ok
]
pytestmark = [
    pytest.mark.skipif(not LONG, reason="long matrix only (ESPER_CRASH_LONG=1, `make crash`): needs FUSE"),
    pytest.mark.skipif(bool(_NO_FUSE), reason=f"C3 needs FUSE: no {' and no '.join(_NO_FUSE)} on this machine"),
]

RUNS = 40
LAZYFS = str(Path(__file__).with_name("lazyfs.py"))
ESPER = str(Path(sys.executable).with_name("esper"))


class Mount:
    """A lazyfs process over `backing` mounted at `mount`; always unmounted on exit (even when the test fails)."""

    def __init__(self, root: Path, tear: float = 0.0, seed: int = 0) -> None:
        self.backing, self.mount = root / "backing", root / "mnt"
        self.backing.mkdir(parents=True)
        self.mount.mkdir(parents=True)
        argv = [sys.executable, LAZYFS, str(self.backing), str(self.mount), "--tear", str(tear), "--seed", str(seed)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def __enter__(self) -> Mount:
        line = self._line(15.0)
        if line != b"ready\n":
            if self.proc.poll() is None:
                self.proc.kill()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self.__exit__()
            pytest.fail(f"lazyfs did not mount {self.mount} (exit {self.proc.returncode}): {line!r} {err}")
        return self

    def _line(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return b"<timeout>"
        return self.proc.stdout.readline()

    def power_cut(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"crash\n")
        self.proc.stdin.flush()
        assert self._line(30.0) == b"crashed\n"
        self.proc.wait(10)

    def mounted(self) -> bool:  # not os.path.ismount: a mount whose daemon is gone fails stat (ENOTCONN)
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == str(self.mount) for line in f)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.mounted():
                r = subprocess.run(["fusermount3", "-u", str(self.mount)], capture_output=True, text=True)
                if r.returncode != 0 and self.mounted():
                    subprocess.run(["fusermount3", "-uz", str(self.mount)], check=True)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()
        assert not self.mounted(), f"{self.mount} still mounted"


def _write(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, data, 0)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.timeout(120)
def test_c3_negative_control_the_fuse_layer_drops_unsynced_data(tmp_path: Path) -> None:
    with Mount(tmp_path / "drop") as m:
        _write(m.mount / "synced", b"durable", sync=True)
        _sync_dir(m.mount)  # the entry of `synced` is durable
        _write(m.mount / "synced", b"VOLATILE", sync=False)  # overwrite, not synced
        _write(m.mount / "unsynced", b"never synced", sync=False)  # created after the directory fsync
        _write(m.mount / "no-dirsync", b"synced data, entry not synced", sync=True)
        assert (m.mount / "synced").read_bytes() == b"VOLATILE"  # reads see the page cache
        assert sorted(os.listdir(m.mount)) == ["no-dirsync", "synced", "unsynced"]
        m.power_cut()
    assert sorted(os.listdir(m.backing)) == ["synced"]
    assert (m.backing / "synced").read_bytes() == b"durable"
    # The tear path: with probability 1 every unsynced sector of a durably named file reaches the disk.
    with Mount(tmp_path / "tear", tear=1.0) as m:
        _write(m.mount / "f", b"a" * 1024, sync=True)
        _sync_dir(m.mount)
        _write(m.mount / "f", b"b" * 600, sync=False)
        m.power_cut()
    assert (m.backing / "f").read_bytes() == b"b" * 600 + b"a" * 424


def _one_run(root: Path, rng: random.Random, res: Result, k: int) -> None:
    tear = rng.choice([0.0, 0.5])
    with Mount(root, tear=tear, seed=k) as m:
        args = ["--records", "1000000", "--batch", str(rng.choice([1, 4, 16]))]
        args += ["--threads", str(rng.choice([1, 1, 4])), "--payload-size", str(rng.choice([64, 300, 1500, 5000]))]
        args += ["--segment-size", str(rng.choice([65536, 262144]))]
        w = subprocess.Popen([ESPER, "wal", "stress", str(m.mount / "wal"), *args], stdout=subprocess.PIPE)
        assert w.stdout is not None
        head = b""
        try:
            if rng.random() < 0.85:  # mostly while appending: after the first ack, a random delay
                if select.select([w.stdout], [], [], 15.0)[0]:
                    head = os.read(w.stdout.fileno(), 1 << 16)
                time.sleep(rng.uniform(0.0, 0.4))
            else:  # from the start: start-up, first segment creation
                time.sleep(rng.uniform(0.0, 1.0))
        finally:
            os.kill(w.pid, signal.SIGKILL)
            out = head + w.stdout.read()
            w.wait()
            w.stdout.close()
        m.power_cut()
    acked = {int(x.split()[1]) for x in out.split(b"\n")[:-1] if x.startswith(b"acked ")}
    report = recover(str(m.backing / "wal"), keep_payloads=True) if (m.backing / "wal").exists() else None
    res.runs += 1
    res.acked += len(acked)
    if report is None:  # the directory itself did not survive: fine only if nothing was acked
        res.classes["no-dir"] += 1
        res.lost += len(acked)
        return
    res.times_ms.append(report.duration_s * 1e3)
    res.classes[report.findings[-1].kind if report.findings else "empty"] += 1
    if report.corruption is not None:
        res.false_corruption += 1
    got = {r.lsn: r for r in report.records if r.type == RecordType.DATA}
    res.recovered += len(got)
    res.lost += len(acked - got.keys())
    res.unacked_recovered += len(got.keys() - acked)
    res.corrupted_accepted += sum(1 for r in got.values() if not stress_payload_ok(r.payload or b""))


@pytest.mark.timeout(600)
def test_c3_fuse_power_loss_never_loses_an_acked_record(tmp_path: Path) -> None:
    rng = random.Random(3)
    res = Result(f"C3 kill -9 + FUSE power cut, exec'd `esper wal stress` x{RUNS}", power_loss=True)
    t0 = time.monotonic()
    for k in range(RUNS):
        _one_run(tmp_path / f"run-{k}", rng, res, k)
    res.scenario += f" ({time.monotonic() - t0:.0f} s)"
    publish("C3: power loss through a FUSE layer (unsynced writes and directory entries dropped or torn)", [res])
    assert res.runs == RUNS and res.acked > 0
    assert res.lost == 0 and res.corrupted_accepted == 0 and res.false_corruption == 0
