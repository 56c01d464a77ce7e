"""fsutil atomic writes, the job state file, the data-dir lock and the intent journal."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydantic_core
import pytest

from core import fsutil
from core.fsutil import atomic_create_bytes, atomic_write_bytes, atomic_write_json
from core.jobs import JobKey, JobState, Row
from core.store import StateError
from core.store.files.journal import IntentJournal
from core.store.files.jsonio import ENCODE_SLICE, to_json_in_slices
from core.store.files.lock import DataDirLock, LockHeld
from core.store.files.state import StateStore

REPO = Path(__file__).resolve().parents[2]
ROOT = "sha256:" + "ab" * 32

# --------------------------------------------------------------------------- fsutil


def test_atomic_write_creates_parents_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "f.bin"
    atomic_write_bytes(path, b"one", mode=0o600)
    assert path.read_bytes() == b"one"
    assert path.stat().st_mode & 0o777 == 0o600
    atomic_write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert os.listdir(path.parent) == ["f.bin"]  # no temp file left behind


def test_temp_file_never_visible_under_final_name(tmp_path: Path, monkeypatch) -> None:
    """Until os.replace, the final name holds the old content; the new bytes live in a hidden temp."""
    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"old")
    seen: dict[str, object] = {}
    real_replace = os.replace

    def spy(src, dst):
        seen["final"] = Path(dst).read_bytes()
        seen["temp"] = Path(src).name
        seen["temp_content"] = Path(src).read_bytes()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(path, b"new")
    assert seen["final"] == b"old"
    assert seen["temp_content"] == b"new"
    assert fsutil.is_temp_name(str(seen["temp"]))
    assert path.read_bytes() == b"new"


def test_crash_before_replace_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"old")

    def boom(src, dst):
        raise KeyboardInterrupt  # like a kill between write and rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_leftover_temp_file_is_ignored(tmp_path: Path) -> None:
    """A kill -9 after the temp write leaves `.name.xxxx.tmp`: loading still works."""
    store = StateStore(tmp_path / "state" / "scheduler.json")
    store.save({JobKey("ns", "fast"): JobState(failures=2)})
    (tmp_path / "state" / ".scheduler.json.deadbeef.tmp").write_text('{"version": 1, "jo')
    assert store.load() == {JobKey("ns", "fast"): JobState(failures=2)}
    store.save({})
    assert store.load() == {}


def test_kill_9_during_writes_leaves_old_or_new(tmp_path: Path) -> None:
    """A real child process rewriting a file in a loop, killed at a random instant."""
    path = tmp_path / "f.json"
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]);"
        "from core.fsutil import atomic_write_json;"
        "i = 0\n"
        "while True:\n"
        "    atomic_write_json(sys.argv[1], {'n': i, 'pad': 'x' * 200000}); i += 1\n"
        "    if i == 3: print('writing', flush=True)\n"
    )
    for delay in (0.05, 0.13):
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(REPO)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "writing"
            time.sleep(delay)
        finally:
            child.kill()
            child.wait()
        doc = json.loads(path.read_text())
        assert doc["n"] >= 2 and len(doc["pad"]) == 200000


def test_atomic_create_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    assert atomic_create_bytes(path, b"first")
    assert not atomic_create_bytes(path, b"second")
    assert path.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["r.json"]


# --------------------------------------------------------------------------- state file


def _states() -> dict[JobKey, JobState]:
    return {
        JobKey("dao:vaultmesh", "fast"): JobState(
            last_anchored_at=1767225600.25,
            last_root=ROOT,
            last_receipt="/d/receipts/dao%3Avaultmesh/x.json",
            last_attempt_at=1767225600.0,
        ),
        JobKey("a/b", "cold"): JobState(
            failures=3,
            backoff_level=3,
            next_attempt=1767225700.5,
            last_error_kind="network",
            last_error="connection refused",
        ),
    }


def test_state_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state" / "scheduler.json")
    assert store.load() == {}
    states = _states()
    store.save(states)
    assert store.load() == states
    doc = json.loads(store.path.read_text())
    assert doc["version"] == 1
    assert set(doc["jobs"]) == {"dao:vaultmesh/fast", "a/b/cold"}
    assert doc["jobs"]["a/b/cold"]["failures"] == 3


def test_job_state_dict_round_trip() -> None:
    for state in _states().values():
        assert JobState.from_dict(state.to_dict()) == state
    assert JobState.from_dict({}) == JobState()


def test_a_claimed_state_keeps_every_field_but_its_row() -> None:
    """`with_row` (a claim's new fence) builds the state field by field: a field added to
    JobState and left out there would be lost at every claim."""
    values: dict[str, Any] = {f.name: f"value of {f.name}" for f in dataclasses.fields(JobState)}  # each its own
    state = JobState(**values)
    claimed = state.with_row(Row(0, 7))
    assert claimed.row == Row(0, 7)
    assert {f.name: getattr(claimed, f.name) for f in dataclasses.fields(JobState) if f.name != "row"} == {
        name: value for name, value in values.items() if name != "row"
    }


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"version": 1, "jobs": {', "not valid JSON"),
        (b'{"version": "\xff"}', "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"version": 9, "jobs": {}}', "version 9"),
        (b'{"version": 1}', '"jobs" must be an object'),
        (b'{"version": 1, "jobs": {"nocadence": {}}}', "'nocadence'"),
        (b'{"version": 1, "jobs": {"a/fast": {"failures": "x"}}}', "failures"),
        (b'{"version": 1, "jobs": {"a/fast": {"last_root": 5}}}', "last_root"),
    ],
)
def test_corrupt_state_file_raises_naming_it(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "scheduler.json"
    path.write_bytes(content)
    with pytest.raises(StateError) as info:
        StateStore(path).load()
    assert str(path) in str(info.value)
    assert needle in str(info.value)
    assert path.read_bytes() == content  # never discarded


def test_json_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.json"
    path.write_text('{\n  "version": 1,\n  "jobs": {,}\n}\n')
    with pytest.raises(StateError, match=rf"{path}:3:\d+: state file is not valid JSON"):
        StateStore(path).load()


def test_save_100k_jobs_fast(tmp_path: Path) -> None:
    states = {
        JobKey(f"namespace-{i}", "fast"): JobState(
            last_anchored_at=1767225600.123 + i,
            last_root=ROOT,
            last_receipt=f"/var/lib/vmsh/receipts/namespace-{i}/20260101T000000000Z-fast-abababababab.json",
            last_attempt_at=1767225600.1,
        )
        for i in range(100_000)
    }
    store = StateStore(tmp_path / "scheduler.json")
    timings = []
    for _ in range(2):  # the better of two, so a busy CI neighbour does not fail it
        started = time.perf_counter()
        store.save(states)
        timings.append(time.perf_counter() - started)
    elapsed = min(timings)
    assert elapsed < 1.0, f"saving 100,000 jobs took {elapsed:.2f}s"
    loaded = store.load()
    assert len(loaded) == 100_000
    assert loaded[JobKey("namespace-99999", "fast")] == states[JobKey("namespace-99999", "fast")]



# --------------------------------------------------------------------------- state: what changed


def _many(n: int) -> dict[JobKey, JobState]:
    return {JobKey(f"ns-{i}", "fast"): JobState(last_anchored_at=1767225600.0 + i, last_root=ROOT) for i in range(n)}


def _changes(store: StateStore) -> list[dict]:
    path = store.path.with_name(store.path.name + ".changes")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_save_writes_only_the_states_that_changed(tmp_path: Path) -> None:
    """A 100,000-job pass saved all 100,000 states per commit chunk: each save now writes the
    states that changed since the one before (a new state object, or `current_at` moved),
    and the jobs removed; a new store reading the files gets every state as it is now."""
    store = StateStore(tmp_path / "state" / "scheduler.json")
    states = _many(40)
    store.save(states)  # the first save of a process is the whole snapshot
    snapshot = store.path.read_bytes()
    states[JobKey("ns-3", "fast")] = JobState(last_anchored_at=1.0, last_root=ROOT)
    states[JobKey("ns-5", "fast")].current_at = 7.0  # set in place, as a skipped pass does
    del states[JobKey("ns-9", "fast")]
    store.save(states)
    assert store.path.read_bytes() == snapshot  # not rewritten
    [line] = _changes(store)
    assert set(line["jobs"]) == {"ns-3/fast", "ns-5/fast"} and line["gone"] == ["ns-9/fast"]
    store.save(states)  # nothing changed: nothing written
    assert len(_changes(store)) == 1
    loaded = StateStore(store.path).load()
    assert loaded == states and loaded[JobKey("ns-5", "fast")].current_at == 7.0


def test_the_snapshot_is_written_whole_again_and_the_changes_removed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "scheduler.json")
    states = _many(10)
    store.save(states)
    for i in range(30):  # the changes grow past the snapshot's size
        states[JobKey(f"ns-{i % 4}", "fast")] = JobState(failures=i)
        store.save(states)
    assert 0 < len(_changes(store)) < 30  # some saves wrote their changes, not every one
    assert StateStore(store.path).load() == states
    for i in range(6):  # more than half of the jobs changed: the whole snapshot at once
        states[JobKey(f"ns-{i}", "fast")] = JobState(failures=100 + i)
    store.save(states)
    assert _changes(store) == [] and json.loads(store.path.read_text())["jobs"]["ns-5/fast"]["failures"] == 105
    assert StateStore(store.path).load() == states


def _one_change_saved(tmp_path: Path) -> tuple[StateStore, dict[JobKey, JobState], Path]:
    """A store of 10 jobs whose second save wrote one change line: (store, states, changes file)."""
    store = StateStore(tmp_path / "scheduler.json")
    states = _many(10)
    store.save(states)
    states[JobKey("ns-1", "fast")] = JobState(failures=1)
    store.save(states)
    return store, states, store.path.with_name("scheduler.json.changes")


def test_a_change_line_cut_short_is_a_save_that_never_returned(tmp_path: Path) -> None:
    store, states, changes = _one_change_saved(tmp_path)
    with open(changes, "ab") as f:
        f.write(b'{"of": "' + json.loads(store.path.read_text())["changes"].encode() + b'", "jobs": {"ns-2/fast": {"fail')
    assert StateStore(store.path).load() == states
    restarted = StateStore(store.path)
    restarted.load()
    states[JobKey("ns-2", "fast")] = JobState(failures=2)
    restarted.save(states)  # a new process's first save: whole, the cut line gone with the changes
    assert not changes.exists() and StateStore(store.path).load() == states


def test_a_bad_change_line_before_the_last_names_its_file_and_line(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "scheduler.json")
    store.save(_many(10))
    changes = store.path.with_name("scheduler.json.changes")
    of = json.loads(store.path.read_text())["changes"]
    changes.write_text(f'{{"of": "{of}", "jobs": {{}}}}\n{{"of": "{of}", "jobs": {{"x": {{}}}}}}\n{{"of": "{of}"}}\n')
    with pytest.raises(StateError, match=rf"{changes}:2: job 'x'"):
        StateStore(store.path).load()
    changes.write_text(f'{{"of": "{of}", "jobs": {{}}}}\nnot json\n{{"of": "{of}"}}\n')
    with pytest.raises(StateError, match=rf"{changes}:2: a change line is not valid"):
        StateStore(store.path).load()


def test_changes_the_snapshot_accounts_for_are_not_applied_again(tmp_path: Path) -> None:
    """A changes file left beside a newer snapshot (its removal lost to a crash) is not
    applied over it: a line counts only for the snapshot it names."""
    store, states, changes = _one_change_saved(tmp_path)
    old = changes.read_bytes()
    states[JobKey("ns-1", "fast")] = JobState(failures=2)
    StateStore(store.path).save(states)  # whole: a new snapshot, the changes removed
    changes.write_bytes(old)
    assert StateStore(store.path).load()[JobKey("ns-1", "fast")].failures == 2


# --------------------------------------------------------------------------- lock

_HOLDER = (
    "import sys, time; sys.path.insert(0, sys.argv[2]);"
    "from core.store.files.lock import DataDirLock;"
    "lock = DataDirLock(sys.argv[1]).acquire();"
    "print('locked', flush=True);"
    "time.sleep(600)"
)


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), str(REPO), "--tag=\x1b[31mred"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        lock = DataDirLock(tmp_path)
        with pytest.raises(LockHeld) as info:
            lock.acquire()
        assert info.value.pid == child.pid
        assert info.value.path == tmp_path / "scheduler.lock"
        # Who holds it, running what (escaped), and how to stop it.
        first, second = str(info.value).splitlines()
        assert first.startswith(
            f"another scheduler holds {tmp_path / 'scheduler.lock'}: pid {child.pid}, "
            f"running {sys.executable} -c import sys"
        )
        # The whole command line, control characters escaped, cut at 300 characters (its
        # length depends on where the checkout and the temp folder are).
        argv = [sys.executable, "-c", _HOLDER, str(tmp_path), str(REPO), "--tag=\\x1b[31mred"]
        shown = " ".join(argv)
        if len(shown) > 300:
            shown = shown[:297] + "..."
        assert first.endswith(f"running {shown}")
        assert "\x1b" not in first  # never the raw escape sequence
        assert second == (
            f"  stop it with `kill -TERM {child.pid}` (it finishes what is in flight, saves its "
            "state and releases the lock), then start again"
        )
        assert not lock.held
    finally:
        child.terminate()
        child.wait(timeout=10)
    # The kernel dropped the dead holder's lock: we can take it now, and know we took over.
    with DataDirLock(tmp_path) as lock:
        assert lock.held
        assert lock.taken_over == child.pid
        assert (tmp_path / "scheduler.lock").read_text().strip() == str(os.getpid())
    assert not lock.held
    with DataDirLock(tmp_path) as lock:  # released cleanly last time: nothing taken over
        assert lock.taken_over is None


def test_lock_held_under_a_pid_that_is_no_process_here(tmp_path: Path) -> None:
    """A scheduler in another container sharing the data dir: its pid means nothing here."""
    import fcntl

    path = tmp_path / "scheduler.lock"
    path.write_text(f"{2**30}\n")
    with path.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LockHeld) as info:
            DataDirLock(tmp_path).acquire()
    assert str(info.value) == (
        f"another scheduler holds {path}: it recorded pid {2**30}, which is not a process here "
        "(a scheduler in another container or on another host sharing this data dir?)\n"
        "  stop that scheduler: the lock is free the moment it exits"
    )


def test_lock_in_same_process_and_release(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path / "data").acquire()
    second = DataDirLock(tmp_path / "data")
    with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        second.acquire()
    first.release()
    first.release()  # idempotent
    second.acquire()
    second.release()


# --------------------------------------------------------------------------- journal


def _entries() -> list[dict]:
    return [
        {"job": "a/fast", "batch": {"id": "000001", "root": ROOT}, "leaf_index": 0},
        {"job": "dao:b/fast", "batch": {"id": "7", "root": "sha256:" + "cd" * 32}, "leaf_index": 1},
    ]


def test_journal_across_restart(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    journal = IntentJournal(folder)
    assert journal.pending() == []
    intent = journal.open("local:dev", _entries(), "EF" * 32, 1767225600.5)
    assert intent.tree_size == 2
    assert intent.digest == "ef" * 32 and intent.digest_bytes == bytes.fromhex("ef" * 32)
    assert intent.path.exists() and intent.path.parent == folder
    intent.note({"tx_hash": "0x01"})
    intent.note({"nonce": 4})
    # A crash here: a new journal on the same folder sees the notes, no attestation.
    [again] = IntentJournal(folder).pending()
    assert again.id == intent.id and again.notes == {"tx_hash": "0x01", "nonce": 4}
    assert again.attestation is None and again.status is None
    assert again.entries == _entries() and again.target == "local:dev"
    assert again.jobs == [JobKey("a", "fast"), JobKey("dao:b", "fast")]

    again.attested({"token": "AAAA", "serial": 5}, "pending", 1)
    [third] = IntentJournal(folder).pending()
    assert third.attestation == {"token": "AAAA", "serial": 5}
    assert (third.status, third.confirmations) == ("pending", 1)
    assert third.notes == {"tx_hash": "0x01", "nonce": 4}

    third.close()
    third.close()  # idempotent
    assert IntentJournal(folder).pending() == []
    assert os.listdir(folder) == []


def test_note_is_durable_before_returning(tmp_path: Path) -> None:
    journal = IntentJournal(tmp_path)
    intent = journal.open("eip155:1", _entries()[:1], "00" * 32, 1.0)
    intent.note({"tx_hash": "0xabc"})
    assert json.loads(intent.path.read_text())["notes"] == {"tx_hash": "0xabc"}


def test_journal_ids_sort_by_time(tmp_path: Path) -> None:
    journal = IntentJournal(tmp_path)
    late = journal.open("local:dev", _entries(), "11" * 32, 2000.0)
    early = journal.open("local:dev", _entries(), "22" * 32, 1000.0)
    same = [journal.open("local:dev", _entries(), "33" * 32, 1000.0) for _ in range(20)]
    assert len({i.id for i in same}) == 20
    ids = [i.id for i in journal.pending()]
    assert ids[0].startswith("0000001000000-") and ids[-1] == late.id
    assert early.id in ids


def test_journal_rejects_bad_input(tmp_path: Path) -> None:
    journal = IntentJournal(tmp_path)
    with pytest.raises(ValueError):
        journal.open("local:dev", _entries(), "xyz", 1.0)
    with pytest.raises(ValueError):
        journal.open("local:dev", [], "00" * 32, 1.0)


def test_corrupt_journal_file_is_moved_aside_with_warning(tmp_path: Path) -> None:
    journal = IntentJournal(tmp_path)
    good = journal.open("local:dev", _entries(), "44" * 32, 5.0)
    bad = tmp_path / "0000000000001-00000000.json"
    bad.write_text('{"version": 1, "id": ')
    wrong = tmp_path / "0000000000002-00000000.json"
    wrong.write_text('{"version": 1, "id": "x"}')
    (tmp_path / ".0000000000003-0.json.ab.tmp").write_text("{")  # leftover temp: ignored

    intents, warnings = IntentJournal(tmp_path).scan()
    assert [i.id for i in intents] == [good.id]
    assert len(warnings) == 2
    assert str(bad) in warnings[0] and "not valid JSON" in warnings[0]
    assert f"{bad}.corrupt" in warnings[0]
    assert str(wrong) in warnings[1]
    assert (tmp_path / (bad.name + ".corrupt")).read_text() == '{"version": 1, "id": '
    assert not bad.exists() and not wrong.exists()
    # Next start: the corrupt files stay aside, the journal is clean.
    again = IntentJournal(tmp_path)
    assert [i.id for i in again.pending()] == [good.id]
    assert again.warnings == []


def test_note_from_another_thread(tmp_path: Path) -> None:
    """Backends may call note() from a worker thread (e.g. a blocking signer)."""
    intent = IntentJournal(tmp_path).open("eip155:1", _entries(), "55" * 32, 1.0)
    t = threading.Thread(target=intent.note, args=({"tx_hash": "0x9"},))
    t.start()
    t.join()
    assert IntentJournal(tmp_path).pending()[0].notes == {"tx_hash": "0x9"}


def test_a_failed_append_makes_the_next_save_whole(tmp_path: Path, monkeypatch) -> None:
    """A disk that filled during an append leaves part of a line: it is never followed by
    another line (which would make it a bad line in the middle); the next save is whole."""
    store = StateStore(tmp_path / "scheduler.json")
    states = _many(10)
    store.save(states)
    states[JobKey("ns-2", "fast")] = JobState(failures=2)
    store.save(states)
    assert len(_changes(store)) == 1
    saved = dict(states)
    real_write = os.write

    def half(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half)
    states[JobKey("ns-1", "fast")] = JobState(failures=1)
    with pytest.raises(OSError):
        store.save(states)
    monkeypatch.setattr(os, "write", real_write)
    assert StateStore(store.path).load() == saved  # the cut line ignored: the save never returned
    store.save(states)
    assert _changes(store) == [] and StateStore(store.path).load() == states


@pytest.mark.parametrize("jobs", [0, 1, ENCODE_SLICE, 2 * ENCODE_SLICE + 7])
@pytest.mark.parametrize("head", [{}, {"version": 1, "changes": "ab12"}])
def test_the_state_encoded_a_slice_of_jobs_at_a_time_is_the_same_json(jobs, head, monkeypatch):
    """The state file's jobs are encoded a slice at a time (the encoder holds the GIL for a
    call: 10,000 jobs kept the engine's loop waiting 20 ms); the bytes are the encoder's own
    for the whole document, the jobs last."""
    states = {f"ns{i}/fast": JobState(last_anchored_at=1e9 + i, last_root=f"sha256:{i:064x}").to_dict() for i in range(jobs)}
    doc = {**head, "jobs": states}
    sizes = []
    to_json = pydantic_core.to_json

    def encoder(value: Any) -> bytes:
        sizes.append(len(value.get("jobs", value)) if isinstance(value, dict) else 0)  # jobs in this call
        return to_json(value)

    monkeypatch.setattr(pydantic_core, "to_json", encoder)
    encoded = to_json_in_slices(doc, "jobs")
    monkeypatch.undo()

    assert max(sizes) <= ENCODE_SLICE  # no call holds the GIL for more than a slice's jobs

    assert encoded == pydantic_core.to_json(doc)
    assert to_json_in_slices({"jobs": states, **head}, "jobs") == encoded  # moved last
