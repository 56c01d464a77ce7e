"""The store contract: the same cases, once per store, on the real thing.

As the backend contract (test_backend_contract.py) runs once per target scheme, every case
below runs on each store of core/store/: `file` (the data dir: core/store/files/) and
`postgresql` (core/store/postgres/, on a real PostgreSQL server from
tests/cluster/pg_fixtures.py). Each case talks to the store through the parts the engine
sees (`store.state`, `store.journal`, `store.receipts`, `store.claims`); SQL appears only
where a case needs the world to change under the store (a lease running out, a replica
going away, a database refusing a statement mid-commit): the per-store helpers below.

What a store promises, and every store must keep:

- state: a saved job state loads back whole (every JobState field); a job never saved is
  absent; another store on the same place (a new file store on the same data dir, another
  replica on the same database) sees it; a state read and saved again replaces it.
- journal: an opened intent is found by scan() with its entries, digest, notes and
  attestation; close_many() removes it; quarantine() takes it out of scan().
- receipts: recent() newest first, for_job() only that job's, load() the receipt written,
  pending() the pending ones until confirm(); two receipts never share a name; another
  store on the same place lists and loads them.

Claims (`store.claims`: fenced leases and the commit of an anchor; the file store's always
grant, core/store/files/claims.py), on every store:

- claims: a claim grants a lease with a fencing token; a new claim of the job a larger one.
- fencing: a release or a commit under a fence that is no longer the job's current one does
  nothing (releases nothing / its path is None and no receipt is written).
- commit: the receipts written, listed (by another store on the same place too), the
  leases let go.

On stores several schedulers share (`store.shared`; the file store has one scheduler, the
data-dir lock: these are skipped for it):

- claims: a held job cannot be claimed by another replica; once the lease ran out another
  replica claims it under a larger fence.
- fencing: a state save under a stale fence, on a stale read or over another replica's
  lease is refused (Written.refused, the stored state unchanged); a save or a release under
  a fence another claim replaced lets nothing go; a commit under it writes nothing.
- intents and take-over: the intent of a replica that is gone, whose jobs' leases ran
  out, is adopted by another (journal.orphans()) with its jobs under new fences; the gone
  replica's commit for it then raises Superseded; receipts one replica wrote are listed
  by the other.

On stores whose commit also writes the state and removes the intent (`closes_intents`):

- commit atomicity: receipt, state (its `last_receipt`), the lease's release and the
  intent's removal together, or, when anything in it fails, none of them.

Each case fails when its guarantee is broken by hand in the store (a fence check dropped
from a statement, a commit split in two transactions, an ORDER BY reversed, ...).

Adding a store: one rig in `RIGS` (its URL, its opener as `core.store.STORES` names it, and,
for a store several schedulers share, how a lease runs out, a replica goes and a commit
fails in it: `expire`, `registry`, `failing_commit`);
`test_every_store_in_the_registry_runs_the_contract` fails until it is there.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from core.jobs import JobKey, JobState
from core.receipts import Receipt, build_receipt
from core.store import STORES as STORE_REGISTRY
from core.store import Intent, Store, Superseded, Written, open_store
from core.store.postgres.database import Database
from tests.cluster.postgres import PASSWORD

REPO = Path(__file__).resolve().parents[2]
LEASE = 10.0  # seconds: the stores' lease (open_store), and every claim's below

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TARGET = "local:dev"
ATTESTATION: dict[str, Any] = {"scheme": "test", "token": "c29tZSBieXRlcw==", "serial": 7}  # never verified by a store

J = JobKey("ns-a", "fast")
K = JobKey("ns-b", "fast")
L = JobKey("dao:vaultmesh", "strong")  # a namespace a file name must encode


def root(job: JobKey, n: int) -> str:
    return "sha256:" + hashlib.sha256(f"{job}-{n}".encode()).hexdigest()


def digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def full_state(n: int) -> JobState:
    """A state with every field set (none at its default), different for each `n`."""
    return JobState(
        last_anchored_at=T0 + n,
        last_root=root(J, n),
        failures=n + 1,
        backoff_level=n + 2,
        next_attempt=T0 + n + 60.5,
        last_error_kind="network",
        last_error=f"connection refused ({n})",
        last_receipt=f"receipt-{n}.json",
        last_attempt_at=T0 + n + 0.25,
        current_at=T0 + n + 0.75,
    )


def receipt(
    job: JobKey, n: int = 1, *, at: float = T0, status: str = "confirmed", anchored: str | None = None,
    leaf_index: int = 0, tree_size: int = 1,
) -> Receipt:
    return build_receipt(
        namespace=job.namespace,
        cadence=job.cadence,
        target=TARGET,
        batch_id=f"{n:06d}",
        batch_root=root(job, n),
        anchored_root=anchored or root(job, n),
        proof=[hashlib.sha256(f"sibling-{job}-{n}".encode()).digest()],
        leaf_index=leaf_index,
        tree_size=tree_size,
        attestation=ATTESTATION,
        status=status,
        confirmations_required=2 if status == "pending" else 0,
        confirmations_observed=0,
        anchored_at=at,
        version="0.0.0-contract",
        config_hash="sha256:" + "ab" * 32,
    )


def entries(jobs: list[JobKey], n: int = 1) -> list[dict[str, Any]]:
    """An intent's entries, as the engine writes them (core/engine/anchoring.py `Anchoring._anchor`)."""
    return [
        {"job": str(job), "batch": {"id": f"{n:06d}", "root": root(job, n)}, "leaf_index": i}
        for i, job in enumerate(jobs)
    ]


def open_intent(store: Store, jobs: list[JobKey], n: int = 1) -> Intent:
    return store.journal.open(TARGET, entries(jobs, n), digest(jobs, n), T0 + n)


def receipts_for(intent: Intent, at: float = T0 + 30) -> list[Receipt]:
    """The receipts of an intent's jobs (core/engine/commit.py `Committer._receipt`)."""
    return [
        receipt(job, int(e["batch"]["id"]), at=at, anchored="sha256:" + intent.digest,
                leaf_index=e["leaf_index"], tree_size=len(intent.entries))
        for e, job in zip(intent.entries, intent.jobs, strict=True)
    ]


def fence_of(state: JobState) -> int:
    assert state.row is not None and state.row.fence is not None, f"no lease fence on {state!r}"
    return state.row.fence


def with_row(state: JobState, read: JobState) -> JobState:
    """`state`, built on `read`: the row it was read at travels with it (a shared store's
    version and lease fence; JobState.row)."""
    state.row = read.row
    return state


# --------------------------------------------------------------------------- the stores


class FileRig:
    """The file store, on the data dir tmp_path/data. One scheduler (the data-dir lock): it
    has none of the helpers for cases on several schedulers."""

    kind = "file"
    opener = "core.store.files:open_file_store"

    def url(self, request: pytest.FixtureRequest) -> str:
        return "file"

    def prepare(self, url: str) -> None:
        pass  # the data dir is made as it is written

    def expire(self, store: Store, job: JobKey) -> None:
        raise NotImplementedError("expire(): the file store has one scheduler")

    def registry(self, store: Store, replica: str, *, alive: bool) -> None:
        raise NotImplementedError("registry(): the file store has one scheduler")

    def failing_commit(self, store: Store) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError("failing_commit(): the file store's commit writes receipts only")


class PostgresRig:
    """The PostgreSQL store, on the test's database (tests/cluster/pg_fixtures.py), migrated."""

    kind = "postgresql"
    opener = "core.store.postgres:open_postgres_store"

    def url(self, request: pytest.FixtureRequest) -> str:
        url: str = request.getfixturevalue("pg_url")
        return url

    def prepare(self, url: str) -> None:
        db = Database(url, password=PASSWORD)
        try:
            db.migrate()
        finally:
            db.close()

    @staticmethod
    def _db(store: Store) -> Database:
        assert store.db is not None
        return store.db

    def expire(self, store: Store, job: JobKey) -> None:
        with self._db(store).tx() as conn:
            conn.execute(
                "UPDATE jobs SET lease_until = clock_timestamp() - interval '1 second' WHERE job = %s", (str(job),)
            )

    def registry(self, store: Store, replica: str, *, alive: bool) -> None:
        with self._db(store).tx() as conn:
            conn.execute("DELETE FROM replicas WHERE id = %s", (replica,))
            if alive:
                conn.execute(
                    "INSERT INTO replicas (id, host, pid, version, config_hash, started_at, heartbeat_at) "
                    "VALUES (%s, 'contract', 1, 'v', 'c', clock_timestamp(), clock_timestamp())",
                    (replica,),
                )

    @contextmanager
    def failing_commit(self, store: Store) -> Iterator[None]:
        with self._db(store).tx() as conn:
            conn.execute(
                "CREATE FUNCTION contract_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'refused for the store contract'; END $$"
            )
            conn.execute(
                "CREATE TRIGGER contract_refuse BEFORE DELETE ON intents FOR EACH ROW EXECUTE FUNCTION contract_refuse()"
            )
        try:
            yield
        finally:
            with self._db(store).tx() as conn:
                conn.execute("DROP TRIGGER contract_refuse ON intents")
                conn.execute("DROP FUNCTION contract_refuse()")


# The stores under contract: one rig each (how to reach it, and how the world changes under
# it for the cases on several schedulers). A new store is one parameter here.
Rig = FileRig | PostgresRig
RIGS: dict[str, Rig] = {rig.kind: rig for rig in (
    FileRig(),
    PostgresRig(),
)}
STORES = [pytest.param(rig, id=kind) for kind, rig in RIGS.items()]


def open_on(rig: Rig, request: pytest.FixtureRequest, tmp_path: Path, replica: str) -> Store:
    """The rig's store on this test's place (the data dir tmp_path/data, the test's
    database), opened as the scheduler opens it (core.store.open_store), as replica
    `replica` of a shared one."""
    return open_store(
        rig.url(request), data_dir=tmp_path / "data", env={"VMSH_STORE_PASSWORD": PASSWORD}, lease=LEASE,
        replica=replica,
    )


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store (replica "a" of a shared one)."""
    rig = request.param
    rig.prepare(rig.url(request))
    made = open_on(rig, request, tmp_path, "a")
    assert made.kind == rig.kind
    yield made
    made.close()


@pytest.fixture
def other(store: Store, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A second store on the same place: a new file store on the same data dir, or
    replica "b" on the same database."""
    made = open_on(RIGS[store.kind], request, tmp_path, "b")
    yield made
    made.close()


def several_schedulers(store: Store) -> None:
    """For cases on several schedulers sharing one store: skipped for a store that has one
    (the file store: the data-dir lock keeps a second scheduler out; its claims always
    grant, core/store/files/claims.py)."""
    if store.shared is None:
        pytest.skip(f"the {store.kind} store has one scheduler (the data-dir lock): no other replica")


def commit_closes_intents(store: Store) -> None:
    """For cases on a commit that also writes the state and removes the intent (one
    transaction); skipped where the engine does those after it (`closes_intents` False)."""
    if not store.claims.closes_intents:
        pytest.skip(
            f"the {store.kind} store's commit writes receipts only: the engine saves the state "
            "and removes the intent after it (closes_intents is False)"
        )


def path_of(result: Path | Exception | None) -> Path:
    assert isinstance(result, Path), f"no receipt written: {result!r}"
    return result


# How the world changes under a store, for the cases on several schedulers (the rig's).


def expire(store: Store, job: JobKey) -> None:
    """`job`'s lease runs out now (its holder went a lease without renewing it)."""
    RIGS[store.kind].expire(store, job)


def registry(store: Store, replica: str, *, alive: bool) -> None:
    """Replica `replica` is alive (a fresh heartbeat) or gone (no registry row)."""
    RIGS[store.kind].registry(store, replica, alive=alive)


def failing_commit(store: Store) -> contextlib.AbstractContextManager[None]:
    """Inside: the last step of a commit fails (the store refuses to remove an intent, as a
    database that goes away mid-transaction would), after everything else was written."""
    return RIGS[store.kind].failing_commit(store)


def held(by: Store, job: JobKey, probe: Store | None = None) -> None:
    """Assert `job` is leased to `by`: `by` can renew it, and `probe` (another replica of a
    shared store) cannot claim it."""
    assert by.claims.renew([job], LEASE) == 1, f"{job} is not leased to {by.replica or by.kind} any more"
    if probe is not None:
        assert probe.claims.claim({job: JobState()}, LEASE) == {}, f"{job} is not leased to {by.replica}: {probe.replica} claimed it"


def free(store: Store, job: JobKey) -> None:
    """Assert `job`'s lease was let go: its holder can no longer renew it."""
    assert store.claims.renew([job], LEASE) == 0, f"{job} is still leased to {store.replica or store.kind}"


# --------------------------------------------------------------------------- the registry


def test_every_store_in_the_registry_runs_the_contract() -> None:
    assert set(STORE_REGISTRY.values()) == {rig.opener for rig in RIGS.values()}


def test_a_file_store_never_imports_the_postgresql_driver(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from core.store import open_store\n"
        f"store = open_store('file', data_dir={str(tmp_path)!r})\n"
        "store.state.load(); store.receipts.recent(); store.close()\n"
        "assert store.kind == 'file'\n"
        "assert not [m for m in sys.modules if m.startswith(('psycopg', 'core.store.postgres'))], sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --------------------------------------------------------------------------- state


def test_saved_states_load_back_whole_and_unsaved_jobs_are_absent(store: Store, other: Store) -> None:
    states = {J: full_state(1), K: full_state(2), L: JobState(last_root=root(L, 3), current_at=T0)}
    store.state.save(states)
    for reader in (store, other):  # the store itself, and another on the same place
        loaded = reader.state.load()
        assert set(loaded) == set(states), "a job never saved is in the store, or a saved one is missing"
        for job, state in states.items():
            assert loaded[job] == state, f"{job} loaded back as {loaded[job]!r}"
            assert loaded[job].to_dict() == state.to_dict()
    assert JobKey("ns-never", "fast") not in other.state.load()


def test_a_state_read_and_saved_again_replaces_it(store: Store, other: Store) -> None:
    store.state.save({J: full_state(1), K: full_state(2)})
    loaded = store.state.load()
    loaded[J] = with_row(full_state(5), loaded[J])
    store.state.save(loaded)
    got = other.state.load()
    assert got[J] == full_state(5), "a saved state did not replace the one it was read from"
    assert got[K] == full_state(2)


# --------------------------------------------------------------------------- journal


def test_an_open_intent_is_found_by_scan_with_its_entries_notes_and_attestation(store: Store) -> None:
    jobs = [J, K, L]
    intent = store.journal.open(TARGET, entries(jobs), digest(jobs).upper(), T0 + 0.5)
    assert intent.digest == digest(jobs) and intent.jobs == jobs and not intent.closed

    found, warnings = store.journal.scan()
    assert warnings == []
    assert [i.id for i in found] == [intent.id]
    got = found[0]
    assert (got.target, got.digest, got.entries, got.tree_size, got.opened_at) == (
        TARGET, digest(jobs), entries(jobs), 3, T0 + 0.5
    )
    assert got.attestation is None and got.status is None and got.notes == {}

    intent.note({"tx_hash": "0x" + "11" * 32})
    intent.attested(ATTESTATION, "pending", 1)
    got = store.journal.scan()[0][0]
    assert got.notes == {"tx_hash": "0x" + "11" * 32}, "a note was not durable"
    assert (got.attestation, got.status, got.confirmations) == (ATTESTATION, "pending", 1), "an attestation was not durable"
    assert got.entries == entries(jobs) and got.digest == digest(jobs)


def test_closed_intents_are_gone_and_a_quarantined_one_leaves_scan(store: Store) -> None:
    one, two, three = (open_intent(store, [job], n) for n, job in enumerate((J, K, L), start=1))
    assert [i.id for i in store.journal.scan()[0]] == sorted([one.id, two.id, three.id])

    assert store.journal.close_many([one]) == []
    assert one.closed
    assert [i.id for i in store.journal.scan()[0]] == sorted([two.id, three.id]), "close_many left the intent"

    two.attested(ATTESTATION, "confirmed", 0)  # a paid attestation is kept aside, never lost
    where = store.journal.quarantine(two, "cannot resolve it: the contract says so")
    assert two.closed and where == two.path
    assert [i.id for i in store.journal.scan()[0]] == [three.id], "a quarantined intent is still scanned"

    assert store.journal.close_many([three]) == []
    assert store.journal.scan() == ([], [])


# --------------------------------------------------------------------------- receipts


def _written(results: list[Path | Exception]) -> list[Path]:
    for result in results:
        assert isinstance(result, Path), f"a receipt write failed: {result!r}"
    return [r for r in results if isinstance(r, Path)]


def test_receipts_list_newest_first_per_job_and_load_back_equal(store: Store) -> None:
    made = [
        receipt(J, 1, at=T0),
        receipt(K, 1, at=T0 + 1),
        receipt(JobKey("ns-a", "strong"), 1, at=T0 + 2),  # J's namespace, another cadence
        receipt(J, 2, at=T0 + 3),
        receipt(L, 1, at=T0 + 4),
    ]
    paths = _written(store.receipts.write_many(made))
    assert len(set(paths)) == len(made)
    for path, r in zip(paths, made, strict=True):
        assert store.receipts.load(path) == r, f"{path} loaded back different"

    recent = store.receipts.recent()
    assert [r for _, r in recent] == made[::-1], "recent() is not newest first"
    assert [p for p, _ in recent] == paths[::-1]
    assert [r for _, r in store.receipts.recent(limit=2)] == [made[4], made[3]]
    assert store.receipts.recent(limit=0) == []

    assert [r for _, r in store.receipts.for_job(J.namespace, J.cadence)] == [made[3], made[0]], "for_job(): not only J's, or not newest first"
    assert [r for _, r in store.receipts.for_job(J.namespace, J.cadence, limit=1)] == [made[3]]
    assert [r for _, r in store.receipts.for_job(L.namespace, L.cadence)] == [made[4]]
    assert store.receipts.for_job("ns-none", "fast") == []
    assert sorted(store.receipts.all_paths(), key=str) == sorted(paths, key=str)


def test_receipts_are_found_by_batch_root_anchored_root_and_batch_id(store: Store) -> None:
    tree = "sha256:" + "cd" * 32  # one anchor over a group: its tree hash is each one's anchored root
    made = [
        receipt(J, 1, at=T0),
        receipt(K, 1, at=T0 + 1, anchored=tree, tree_size=2),
        receipt(L, 1, at=T0 + 2, anchored=tree, leaf_index=1, tree_size=2),
        receipt(J, 2, at=T0 + 3),
    ]
    paths = _written(store.receipts.write_many(made))
    find = store.receipts.find
    assert find(root=root(J, 2)) == [(paths[3], made[3])], "find(root=) by the batch root"
    assert [r for _, r in find(root=tree)] == [made[2], made[1]], "find(root=) by the anchored root, newest first"
    assert [r for _, r in find(root=tree, limit=1)] == [made[2]]
    assert [r for _, r in find(batch_id="000001")] == [made[2], made[1], made[0]]
    assert [r for _, r in find(root=root(J, 1), batch_id="000001")] == [made[0]]
    assert find(root="sha256:" + "ee" * 32) == [] and find(batch_id="999999") == []


def test_pending_receipts_are_listed_until_confirmed(store: Store) -> None:
    first, second = receipt(J, 1, at=T0, status="pending"), receipt(K, 1, at=T0 + 1, status="pending")
    done = receipt(L, 1, at=T0 + 2)
    paths = _written(store.receipts.write_many([first, second, done]))
    assert store.receipts.pending() == [(paths[0], first), (paths[1], second)], "pending(): not the pending ones, oldest first"

    confirmed = store.receipts.confirm(paths[0], 3)
    assert confirmed.status == "confirmed" and confirmed.confirmations.observed == 3
    assert confirmed == first.confirmed(3)
    assert store.receipts.load(paths[0]) == first.confirmed(3), "the confirmation was not written"
    assert store.receipts.pending() == [(paths[1], second)], "a confirmed receipt is still pending"
    assert store.receipts.confirm(paths[0], 9) == first.confirmed(3)  # idempotent: confirmed once
    assert [getattr(r, "status", r) for _, r in store.receipts.recent()] == ["confirmed", "pending", "confirmed"]


@pytest.mark.parametrize("status", ["confirmed", "pending"])
def test_two_receipts_of_one_job_at_the_same_moment_get_names_of_their_own(store: Store, status: str) -> None:
    twins = [receipt(J, 1, at=T0, status=status), receipt(J, 1, at=T0, status=status, anchored=root(K, 1))]
    paths = _written(store.receipts.write_many(twins))
    later = _written(store.receipts.write_many([receipt(J, 1, at=T0, status=status, anchored=root(L, 1))]))
    paths += later
    assert len(set(paths)) == 3, f"receipts share a name: {paths}"
    assert [store.receipts.load(p).anchored_root for p in paths] == [root(J, 1), root(K, 1), root(L, 1)], "a receipt overwrote another"
    assert len(store.receipts.for_job(J.namespace, J.cadence)) == 3
    if status == "pending":
        assert sorted(p for p, _ in store.receipts.pending()) == sorted(paths)


def test_receipts_one_store_wrote_are_listed_and_loaded_by_another(store: Store, other: Store) -> None:
    made = [receipt(J, 1, at=T0), receipt(K, 1, at=T0 + 1, status="pending")]
    paths = _written(store.receipts.write_many(made))
    assert [r for _, r in other.receipts.recent()] == made[::-1]
    assert [p for p, _ in other.receipts.for_job(K.namespace, K.cadence)] == [paths[1]]
    assert [other.receipts.load(p) for p in paths] == made
    assert other.receipts.pending() == [(paths[1], made[1])]
    other.receipts.confirm(paths[1], 2)
    assert store.receipts.load(paths[1]).status == "confirmed"


# --------------------------------------------------------------------------- claims


def test_a_claim_grants_a_lease_with_a_fence_and_each_new_claim_a_larger_one(store: Store) -> None:
    claims = store.claims
    store.state.save({J: full_state(1)})
    known = store.state.load()
    got = claims.claim({J: known[J], K: JobState()}, LEASE)
    assert sorted(got) == [J, K], "a claim nobody else competes for did not grant every job"
    assert got[J] == full_state(1), "a claim does not give the job's state"
    assert got[K] == JobState()  # a job the store has no state for: a new one
    first = fence_of(got[J])
    fence_of(got[K])
    assert claims.renew([J, K], LEASE) == 2

    again = claims.claim({J: got[J]}, LEASE)
    assert fence_of(again[J]) > first, "a new claim did not get a larger fence"
    assert claims.release([(J, fence_of(again[J]))]) == [J]
    free(store, J)
    held(store, K)


def test_another_replica_cannot_claim_a_held_job_until_its_lease_runs_out(store: Store, other: Store) -> None:
    several_schedulers(store)
    mine, theirs = store.claims, other.claims
    got = mine.claim({J: JobState(), K: JobState()}, LEASE)
    first = fence_of(got[J])
    assert theirs.claim({J: JobState(), K: JobState()}, LEASE) == {}, "another replica claimed a held job"
    assert theirs.renew([J, K], LEASE) == 0

    expire(store, J)
    taken = theirs.claim({J: JobState(), K: JobState()}, LEASE)
    assert list(taken) == [J], "a claim took a lease that had not run out, or not one that had"
    assert fence_of(taken[J]) > first, "a lease taken over did not get a larger fence"
    assert mine.claim({J: got[J]}, LEASE) == {}, "the replica whose lease ran out took it back from the new holder"

    assert theirs.release([(J, fence_of(taken[J]))]) == [J]
    assert fence_of(mine.claim({J: got[J]}, LEASE)[J]) > fence_of(taken[J])


# --------------------------------------------------------------------------- fencing


def test_a_release_under_a_stale_fence_releases_nothing(store: Store) -> None:
    claims = store.claims
    stale = claims.claim({J: JobState()}, LEASE)[J]
    current = claims.claim({J: stale}, LEASE)[J]  # a second lease: the first fence is stale
    assert fence_of(current) > fence_of(stale)

    assert claims.release([(J, fence_of(stale))]) == [], "a release under a stale fence released the lease"
    held(store, J)
    assert claims.release([(J, fence_of(current))]) == [J]
    free(store, J)
    assert claims.release([(J, fence_of(current))]) == []


def claimed_twice(store: Store) -> tuple[JobState, JobState]:
    """J saved at state 1, then claimed twice by `store` (a second lease, a new fence): the
    first claim's state, whose fence is stale, and the second's."""
    several_schedulers(store)
    store.state.save({J: full_state(1)})
    stale = store.claims.claim({J: JobState()}, LEASE)[J]
    return stale, store.claims.claim({J: stale}, LEASE)[J]


def test_a_save_or_release_under_a_fence_another_claim_replaced_lets_nothing_go(store: Store, other: Store) -> None:
    stale, current = claimed_twice(store)

    # A save under the stale fence (the state unchanged: nothing to write) lets nothing go.
    unchanged = store.state.write(store.state.snapshot({J: with_row(full_state(1), stale)}))
    assert isinstance(unchanged, Written)
    held(store, J, other)

    # The lease runs out and b claims J: neither a's release nor its save under its (then
    # current) fence lets b's lease go.
    expire(store, J)
    taken = other.claims.claim({J: JobState()}, LEASE)[J]
    assert store.claims.release([(J, fence_of(current))]) == [], "a release under a replaced fence released the new lease"
    held(other, J, store)
    unchanged = store.state.write(store.state.snapshot({J: with_row(full_state(1), current)}))
    assert isinstance(unchanged, Written)
    held(other, J, store)
    assert other.claims.release([(J, fence_of(taken))]) == [J]
    assert J in store.claims.claim({J: JobState()}, LEASE)


def test_a_write_under_a_stale_fence_is_refused(store: Store, other: Store) -> None:
    stale, current = claimed_twice(store)  # a's own later claim: the first fence is stale
    late = store.state.write(store.state.snapshot({J: with_row(full_state(7), stale)}))
    assert isinstance(late, Written)
    assert J in late.refused and J not in late.rows, "a write under a stale fence of its own replica was taken"
    assert late.refused[J] == full_state(1), "a refused write does not give the store's state"
    assert other.state.load()[J] == full_state(1), "a stale write changed the stored state"
    held(store, J, other)

    # The lease runs out and b claims J: a's write under its (then current) fence is late too.
    expire(store, J)
    taken = other.claims.claim({J: JobState()}, LEASE)[J]
    late = store.state.write(store.state.snapshot({J: with_row(full_state(8), current)}))
    assert isinstance(late, Written) and J in late.refused and J not in late.rows, "a write under a replaced fence was taken"
    assert other.state.load()[J] == full_state(1)
    held(other, J, store)

    # Under the current fence the holder's write is taken (and, not held, lets the lease go).
    done = other.state.write(other.state.snapshot({J: with_row(full_state(9), taken)}))
    assert isinstance(done, Written) and J in done.rows and not done.refused
    assert store.state.load()[J] == full_state(9)
    assert J in store.claims.claim({J: JobState()}, LEASE), "a write that let the job go kept its lease"


def test_a_save_built_on_a_stale_read_or_over_another_replicas_lease_is_refused(store: Store, other: Store) -> None:
    several_schedulers(store)
    store.state.save({J: full_state(1), K: full_state(2)})
    seen, seen_by_b = store.state.load(), other.state.load()

    # b saves J over the version both read: a's read of J is stale now.
    done = other.state.write(other.state.snapshot({J: with_row(full_state(3), seen_by_b[J])}))
    assert isinstance(done, Written) and J in done.rows and not done.refused
    late = store.state.write(store.state.snapshot({J: with_row(full_state(4), seen[J])}))
    assert isinstance(late, Written) and J in late.refused and J not in late.rows, "a save over a newer version was taken"
    assert late.refused[J] == full_state(3), "a refused save does not give the store's state"
    assert other.state.load()[J] == full_state(3)

    # b leases K: a save of K (read at its current version) is refused while b holds it.
    other.claims.claim({K: seen_by_b[K]}, LEASE)
    late = store.state.write(store.state.snapshot({K: with_row(full_state(5), seen[K])}))
    assert isinstance(late, Written) and K in late.refused, "a save over another replica's lease was taken"
    assert other.state.load()[K] == full_state(2)


def _anchored(jobs: list[JobKey], first: int = 10) -> list[dict[str, Any]]:
    """The states a commit writes for `jobs` (core/engine/record.py `succeeded`, roughly)."""
    return [{**full_state(n).to_dict(), "last_root": root(job, 1)} for n, job in enumerate(jobs, start=first)]


def test_a_commit_under_a_stale_fence_writes_nothing_for_that_job(store: Store) -> None:
    claims = store.claims
    store.state.save({J: full_state(1), L: full_state(3)})
    known = store.state.load()
    got = claims.claim({J: known[J], L: known[L]}, LEASE)
    again = claims.claim({L: got[L]}, LEASE)[L]  # L leased anew: got[L]'s fence is stale
    assert fence_of(again) > fence_of(got[L])

    intent = open_intent(store, [J, L])
    intent.attested(ATTESTATION, "confirmed", 0)
    done = claims.commit(receipts_for(intent), _anchored([J, L]), [got[J].row, got[L].row], intent.id)

    assert done.paths[1] is None, "a commit under a stale fence wrote a receipt"
    path = path_of(done.paths[0])
    assert sorted(done.rows) == [J]
    assert store.receipts.for_job(L.namespace, L.cadence) == []
    assert store.receipts.all_paths() == [path]
    assert store.state.load()[L] == full_state(3), "a commit under a stale fence wrote the state"
    free(store, J)
    held(store, L)  # under its current fence, which the stale commit did not let go
    assert claims.release([(L, fence_of(again))]) == [L]


def test_a_commit_under_a_fence_another_replica_took_writes_nothing_for_that_job(store: Store, other: Store) -> None:
    several_schedulers(store)
    store.state.save({J: full_state(1), K: full_state(2)})
    got = store.claims.claim({J: JobState(), K: JobState()}, LEASE)
    expire(store, K)
    assert K in other.claims.claim({K: JobState()}, LEASE)  # K: b's now

    intent = open_intent(store, [J, K])
    intent.attested(ATTESTATION, "confirmed", 0)
    done = store.claims.commit(receipts_for(intent), _anchored([J, K]), [got[J].row, got[K].row], intent.id)

    assert done.paths[1] is None, "a commit under a fence another replica replaced wrote a receipt"
    path = path_of(done.paths[0])
    assert other.receipts.for_job(K.namespace, K.cadence) == []
    assert other.receipts.all_paths() == [path]
    loaded = other.state.load()
    assert loaded[K] == full_state(2), "a commit under a replaced fence wrote the state"
    assert loaded[J].last_receipt == str(path)
    held(other, K, store)


# --------------------------------------------------------------------------- commit atomicity


def test_a_commit_writes_the_receipts_and_lets_the_leases_go(store: Store, other: Store) -> None:
    claims = store.claims
    store.state.save({J: full_state(1), K: full_state(2)})
    known = store.state.load()
    got = claims.claim({J: known[J], K: known[K]}, LEASE)
    intent = open_intent(store, [J, K])
    intent.attested(ATTESTATION, "confirmed", 0)
    receipts = receipts_for(intent)
    done = claims.commit(receipts, _anchored([J, K]), [got[J].row, got[K].row], intent.id)

    paths = [path_of(p) for p in done.paths]
    assert len(set(paths)) == 2
    assert [store.receipts.load(p) for p in paths] == receipts, "a committed receipt loads back different"
    assert sorted(done.rows) == [J, K]
    for reader in (store, other):  # receipts one replica committed are listed by the other
        assert sorted(p for p, _ in reader.receipts.recent()) == sorted(paths)
        assert [r for _, r in reader.receipts.for_job(K.namespace, K.cadence)] == [receipts[1]]
    free(store, J)
    free(store, K)
    assert claims.release([(J, fence_of(got[J])), (K, fence_of(got[K]))]) == [], "a commit kept the leases"


def test_a_commit_writes_receipt_state_release_and_intent_removal_together(store: Store, other: Store) -> None:
    commit_closes_intents(store)
    store.state.save({J: full_state(1), K: full_state(2)})
    got = store.claims.claim({J: JobState(), K: JobState()}, LEASE)
    intent = open_intent(store, [J, K])
    intent.attested(ATTESTATION, "confirmed", 0)
    receipts, states = receipts_for(intent), _anchored([J, K])
    done = store.claims.commit(receipts, states, [got[J].row, got[K].row], intent.id)

    paths = [path_of(p) for p in done.paths]
    assert [other.receipts.load(p) for p in paths] == receipts
    loaded = other.state.load()
    for n, (job, path) in enumerate(zip((J, K), paths, strict=True)):
        assert loaded[job].to_dict() == {**states[n], "last_receipt": str(path)}, f"{job}: the state was not committed"
        assert done.rows[job].fence is None
    free(store, J)
    assert sorted(other.claims.claim({J: JobState(), K: JobState()}, LEASE)) == [J, K], "a commit kept the leases"
    assert intent.id not in [i.id for i in store.journal.scan()[0]], "a commit left the intent"


def test_a_commit_that_fails_inside_leaves_nothing_of_it(store: Store, other: Store) -> None:
    commit_closes_intents(store)
    store.state.save({J: full_state(1), K: full_state(2)})
    got = store.claims.claim({J: JobState(), K: JobState()}, LEASE)
    intent = open_intent(store, [J, K])
    intent.attested(ATTESTATION, "confirmed", 0)
    receipts, states = receipts_for(intent), _anchored([J, K])

    with failing_commit(store), pytest.raises(Exception):  # noqa: B017 - whatever the store raises
        store.claims.commit(receipts, states, [got[J].row, got[K].row], intent.id)

    assert other.receipts.all_paths() == [] and other.receipts.recent() == [], "a failed commit left receipts"
    assert other.receipts.pending() == []
    loaded = other.state.load()
    assert (loaded[J], loaded[K]) == (full_state(1), full_state(2)), "a failed commit left states"
    held(store, J, other)
    held(store, K, other)
    found = store.journal.scan()[0]
    assert [i.id for i in found] == [intent.id], "a failed commit removed the intent"
    assert found[0].attestation == ATTESTATION, "a failed commit lost the attestation"

    # Recovery (core/engine/recovery.py `Recovery._resolve_all`): the intent's jobs under the fences its scan
    # granted; the commit now goes through, once.
    leased = found[0].leased
    assert sorted(leased) == [J, K]
    done = store.claims.commit(receipts, states, [leased[J].row, leased[K].row], intent.id, recovered=True)
    assert all(isinstance(p, Path) for p in done.paths)
    assert len(other.receipts.all_paths()) == 2
    assert store.journal.scan() == ([], [])


# --------------------------------------------------------------------------- intents and take-over


def test_the_intent_of_a_gone_replica_is_adopted_under_new_fences_and_its_commit_is_superseded(
    store: Store, other: Store
) -> None:
    several_schedulers(store)
    store.state.save({J: full_state(1), K: full_state(2)})
    got = store.claims.claim({J: JobState(), K: JobState()}, LEASE)
    intent = open_intent(store, [J, K])
    intent.attested(ATTESTATION, "confirmed", 0)

    registry(store, "a", alive=False)
    assert other.journal.orphans() == ([], []), "an intent was adopted while its jobs' leases were held"
    expire(store, J)
    expire(store, K)
    registry(store, "a", alive=True)
    assert other.journal.orphans() == ([], []), "the intent of a live replica was adopted"
    registry(store, "a", alive=False)

    adopted, warnings = other.journal.orphans()
    assert warnings == [] and [i.id for i in adopted] == [intent.id], "the intent of a gone replica was not adopted"
    orphan = adopted[0]
    assert orphan.entries == intent.entries and orphan.digest == intent.digest and orphan.attestation == ATTESTATION
    assert sorted(orphan.leased) == [J, K], "the adopted intent's jobs were not leased to the adopter"
    for job in (J, K):
        assert fence_of(orphan.leased[job]) > fence_of(got[job]), f"{job} adopted under an old fence"
        assert orphan.leased[job] == got[job]
    assert store.claims.claim({J: JobState(), K: JobState()}, LEASE) == {}, "the gone replica claimed an adopted intent's jobs"
    assert other.journal.orphans() == ([], []), "an intent was adopted twice"

    receipts, states = receipts_for(intent), _anchored([J, K])
    with pytest.raises(Superseded):
        store.claims.commit(receipts, states, [got[J].row, got[K].row], intent.id)
    assert other.receipts.all_paths() == [], "the superseded replica wrote receipts"
    assert other.state.load()[J] == full_state(1)

    done = other.claims.commit(receipts, states, [orphan.leased[J].row, orphan.leased[K].row], orphan.id, recovered=True)
    paths = [path_of(p) for p in done.paths]
    # Receipts one replica wrote are listed by the other.
    assert sorted(p for p, _ in store.receipts.recent()) == sorted(paths)
    assert [r for _, r in store.receipts.for_job(J.namespace, J.cadence)] == [receipts[0]]
    assert store.journal.scan() == ([], []) and other.journal.scan() == ([], [])
