"""A batch folder on a mount that stops answering, with the real program and a real mount.

tests/integration/hung_mount.py is a FUSE file system (fusepy) that mirrors a folder and,
while its gate file exists, leaves every request waiting in the kernel, as a hard NFS mount
whose server is gone does. One namespace reads its batches there, another from a plain
folder. Once the mount hangs, the other namespace must go on anchoring at its rate, /health
must answer at once, the hung one must fail naming its folder, and SIGTERM must end the
process within the grace. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.sources import write_batch
from tests.integration.test_config_path import EXIT_WITHIN, Daemon
from tests.integration.test_headless import free_port, receipts, wait_for

MOUNT = Path(__file__).with_name("hung_mount.py")
STALL = 10.0  # core.engine.reads.BATCH_READ_STALL: the hung namespace fails after it


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "mounting a FUSE file system here needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import fuse  # noqa: F401  (fusepy: needs libfuse2, scripts/ensure-tools.sh)
    except (ImportError, OSError) as exc:
        return f"fusepy cannot load libfuse: {exc}"
    return None


pytestmark = pytest.mark.skipif(_can_mount() is not None, reason=str(_can_mount()))


class HungMount:
    def __init__(self, tmp: Path) -> None:
        self.backing, self.point, self.gate = tmp / "backing", tmp / "mnt", tmp / "gate"
        self.backing.mkdir()
        self.point.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, str(MOUNT), str(self.backing), str(self.point), str(self.gate)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        wait_for(lambda: self._up(), 10.0, what="the FUSE mount")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the FUSE server died: {self.proc.stdout and self.proc.stdout.read()}")
        return os.path.ismount(self.point)

    def hang(self) -> None:
        self.gate.touch()

    def close(self) -> None:
        self.gate.unlink(missing_ok=True)  # every waiting request goes on
        subprocess.run(["umount", "-l", str(self.point)], capture_output=True, check=False)
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[HungMount]:
    m = HungMount(tmp_path)
    try:
        yield m
    finally:
        m.close()


def config(tmp: Path, mount: HungMount, port: int) -> Path:
    text = (
        f"scheduler: {{tick: 0.2, data_dir: {tmp / 'data'}, base_backoff: 0.2}}\n"
        f'http: {{listen: "127.0.0.1:{port}"}}\n'
        "targets: {local: {dev: {}}}\n"
        "namespaces:\n"
        f"  hung:\n    source: {mount.point / 'hung'}\n"
        '    cadence: {fast: {target: "local:dev", every: "1s", anchor_unchanged: true}}\n'
        f"  alive:\n    source: {tmp / 'batches' / 'alive'}\n"
        '    cadence: {fast: {target: "local:dev", every: "1s", anchor_unchanged: true}}\n'
    )
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def of(tmp: Path, namespace: str) -> int:
    return sum(1 for r in receipts(tmp) if r["namespace"] == namespace)


def health_seconds(port: int) -> float:
    import httpx

    began = time.monotonic()
    httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    return time.monotonic() - began


def test_a_hung_mount_fails_its_namespace_alone_and_sigterm_still_exits(tmp_path, mount):
    write_batch(mount.backing / "hung", "000001", "sha256:" + "aa" * 32)
    write_batch(tmp_path / "batches" / "alive", "000001", "sha256:" + "bb" * 32)
    port = free_port()
    daemon = Daemon(config(tmp_path, mount, port))
    try:
        wait_for(
            lambda: daemon.alive() and of(tmp_path, "hung") >= 1 and of(tmp_path, "alive") >= 1,
            what="a first receipt of each namespace",
        )
        mount.hang()
        hung_at = time.monotonic()
        before = of(tmp_path, "alive")
        # The other namespace keeps its rate (one a second): a pass never waits for the
        # mount, nor are its later passes held by the read that hangs.
        wait_for(lambda: daemon.alive() and of(tmp_path, "alive") >= before + 5, 12.0,
                 what="five more receipts of the namespace on a plain folder")
        assert max(health_seconds(port) for _ in range(5)) < 0.5  # answers (503: a job is late)
        failed = wait_for(
            lambda: daemon.alive() and [
                r for r in daemon.logged("anchor failed")
                if "has not answered" in str(r.get("error", ""))
            ],
            STALL + 15.0, what="the hung namespace's failure naming its folder",
        )
        assert str(mount.point / "hung") in failed[0]["error"], failed[0]
        assert failed[0].get("job") == "hung/fast", failed[0]
        assert time.monotonic() - hung_at >= STALL - 1.0  # not failed at the first slow read
        assert of(tmp_path, "alive") >= before + 8  # still going meanwhile

        # SIGTERM: the scheduler stops within its grace, its state saved, whatever the
        # read on the mount is doing. (The kernel keeps a process whose thread waits on a
        # FUSE request from exiting until the request is answered, even after _exit: it is
        # reaped as soon as the mount answers. A hard NFS mount's waits are killable.)
        sent = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        stopped = wait_for(lambda: daemon.logged("stopped"), EXIT_WITHIN, what="'stopped' after SIGTERM")
        assert stopped and time.monotonic() - sent < EXIT_WITHIN
        mount.gate.unlink()
        assert daemon.proc.wait(timeout=10) == 0, daemon.err[-2000:]
    finally:
        mount.gate.unlink(missing_ok=True)  # else a kill waits for the mount too
        daemon.kill()


def test_the_mount_answering_again_resumes_its_namespace(tmp_path, mount):
    write_batch(mount.backing / "hung", "000001", "sha256:" + "aa" * 32)
    write_batch(tmp_path / "batches" / "alive", "000001", "sha256:" + "bb" * 32)
    port = free_port()
    daemon = Daemon(config(tmp_path, mount, port))
    try:
        wait_for(lambda: daemon.alive() and of(tmp_path, "hung") >= 1, what="a first receipt")
        mount.hang()
        time.sleep(3.0)  # the mount stays dead a while (not a schedule: a fault's duration)
        stalled = of(tmp_path, "hung")
        mount.gate.unlink()
        wait_for(lambda: daemon.alive() and of(tmp_path, "hung") >= stalled + 2, 15.0,
                 what="the namespace on the mount anchoring again")
        code, _ = daemon.terminate()
        assert code == 0, daemon.err[-2000:]
    finally:
        mount.gate.unlink(missing_ok=True)  # else a kill waits for the mount too
        daemon.kill()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
