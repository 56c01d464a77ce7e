"""core/wire.py: every type that crosses the control socket survives JSON both ways."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from core import events as ev
from core import wire
from core.control import (
    FILE_STORE,
    ReloadResult,
    Snapshot,
    StoreStatus,
    VerifyOutcome,
    VerifyResult,
)
from core.jobs import JobKey, JobSpec, JobState
from core.replicas import ReplicaInfo
from core.status import JobStatus, count
from core.views import JobView

KEY = JobKey("dao:vault/mesh", "fast")  # a namespace with a slash and a colon


def through_json(value):
    return json.loads(json.dumps(value))


def a_view(status: JobStatus = JobStatus.BACKING_OFF) -> JobView:
    spec = JobSpec(KEY, "eip155:8453", 60, Path("/srv/batches/ns"), confirmations=3, anchor_unchanged=True, policy_oid="1.2.3")
    state = JobState(last_anchored_at=1.5, last_root="ab" * 32, failures=2, backoff_level=2, next_attempt=99.25,
                     last_error_kind="transient", last_error="node said no", last_receipt="r.json", current_at=1.5)
    return JobView(spec=spec, state=state, due_at=100.0, in_flight=False, status=status, disabled=None)


def test_snapshot_round_trips_with_views_and_counts():
    views = (a_view(), a_view(JobStatus.OK), a_view(JobStatus.DISABLED))
    snap = Snapshot(now=123.5, views=views, counts=count(views), paused=True, config_hash="cafe",
                    started_at=100.0, last_tick=None, tick=1.0, max_level=5)
    back = wire.decode_snapshot(through_json(wire.encode_snapshot(snap)))
    assert back == snap
    assert back.views[0].key == KEY and back.counts[JobStatus.BACKING_OFF] == 1


def a_replica(host: str, *, this: bool = False, alive: bool = True) -> ReplicaInfo:
    return ReplicaInfo(id=f"{host}-17-ab12", host=host, pid=17, version="0.17.0", config_hash="c0" * 32,
                       in_flight=3, heartbeat_at=1_767_225_600.25, started_at=1_767_225_000.0, alive=alive, this=this)


def test_snapshot_round_trips_with_the_replicas_and_the_store():
    """An attached dashboard shows the cluster the scheduler it talks to sees."""
    views = (a_view(),)
    snap = Snapshot(now=123.5, views=views, counts=count(views), paused=False, config_hash="cafe",
                    started_at=100.0, last_tick=120.0, tick=1.0, max_level=5,
                    replicas=(a_replica("vm-a", this=True), a_replica("vm-b", alive=False)),
                    store=StoreStatus("postgresql", False, "connection refused"))
    back = wire.decode_snapshot(through_json(wire.encode_snapshot(snap)))
    assert back == snap
    assert [r.host for r in back.replicas] == ["vm-a", "vm-b"] and back.replicas[0].this
    assert back.store == StoreStatus("postgresql", False, "connection refused")


def test_a_snapshot_from_an_older_server_is_the_file_store_alone():
    views = (a_view(),)
    snap = Snapshot(now=1.0, views=views, counts=count(views), paused=False, config_hash="cafe",
                    started_at=0.0, last_tick=None, tick=1.0, max_level=5)
    older = through_json(wire.encode_snapshot(snap))
    del older["replicas"], older["store"]
    back = wire.decode_snapshot(older)
    assert (back.replicas, back.store) == ((), FILE_STORE)
    broken = through_json(wire.encode_snapshot(dataclasses.replace(snap, replicas=(a_replica("vm-a"),))))
    del broken["replicas"][0]["config_hash"]
    with pytest.raises(wire.WireError, match="replica: missing field 'config_hash'"):
        wire.decode_snapshot(broken)
    with pytest.raises(wire.WireError, match="store: missing field 'ok'"):
        wire.decode_snapshot({**older, "store": {"kind": "postgresql"}})


def test_job_key_spec_state_view_round_trip():
    view = a_view()
    assert wire.decode_job_key(through_json(wire.encode_job_key(KEY))) == KEY
    assert wire.decode_job_spec(through_json(wire.encode_job_spec(view.spec))) == view.spec
    assert wire.decode_job_state(through_json(wire.encode_job_state(view.state))) == view.state
    assert wire.decode_job_view(through_json(wire.encode_job_view(view))) == view


def test_counts_round_trip():
    counts = count((a_view(), a_view(JobStatus.STALE)))
    assert wire.decode_counts(through_json(wire.encode_counts(counts))) == counts


EVENTS = [
    ev.JobSkipped(1.0, KEY, "nothing new"),
    ev.AnchorStarted(1.0, "local:dev", (KEY, JobKey("b", "slow")), "00ff"),
    ev.AnchorSucceeded(2.0, KEY, "local:dev", "aa", 0.25, "confirmed"),
    ev.AnchorFailed(2.0, KEY, "local:dev", "transient", "timeout", 1.5),
    ev.TargetAnswered(2.5, (KEY,), "rfc3161:b", False, 9.0, "cannot connect"),
    ev.StorageFailed(3.0, "journal", None, 28, "No space left on device"),
    ev.BackoffChanged(3.0, KEY, 2, 5, 60.0, "transient", "timeout"),
    ev.BackoffChanged(3.0, KEY, 0, 5, None),
    ev.ReceiptWritten(4.0, KEY, "local:dev", "/d/r.json", "aa", "pending", 4.0),
    ev.ReceiptWritten(4.0, KEY, "btc:regtest", "/d/r.json", "aa", "pending", 4.0, "ab" * 32, 1, 6),
    ev.ReceiptDepth(4.5, KEY, "btc:regtest", "/d/r.json", 2, 6),
    ev.ReceiptConfirmed(5.0, KEY, "local:dev", "/d/r.json"),
    ev.WalletRead(5.5, "btc:regtest", 9000, 29, False),
    ev.ConfigApplied(6.0, "hash", added=(KEY,), removed=(), changed=(JobKey("c", "x"),)),
    ev.ConfigRejected(6.0, ("config.yaml:3: bad",)),
    ev.Paused(7.0, True),
    ev.ControlCommand(7.5, "force", 1000, "alice", {"job": "a/fast"}, 200),
    ev.ReplicasSeen(7.8, 2, True),
    ev.TokenDiscarded(7.9, "rfc3161:tsa", "20261206-abc", "lease_lost", 3),
    ev.TickCompleted(8.0, 0.01, 3),
    ev.LogRecord(9.0, "info", "anchored", {"job": "a/b", "n": 2, "nested": {"x": [1, None]}}),
]


def test_every_event_type_is_covered_here():
    assert {type(e).__name__ for e in EVENTS} == set(wire.EVENT_TYPES)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_round_trips(event):
    encoded = through_json(wire.encode_event(event))
    assert encoded["type"] == type(event).__name__
    back = wire.decode_event(encoded)
    assert back == event
    for f in dataclasses.fields(event):  # JobKey stays a JobKey, tuples stay tuples
        assert type(getattr(back, f.name)) is type(getattr(event, f.name))


def test_unknown_event_type_is_skipped_and_bad_shapes_name_the_field():
    assert wire.decode_event({"type": "FromTheFuture", "event": {}}) is None
    with pytest.raises(wire.WireError, match="missing field 'reason'"):
        wire.decode_event({"type": "JobSkipped", "event": {"at": 1.0, "job": "a/b"}})
    with pytest.raises(wire.WireError, match="is not a job"):
        wire.decode_event({"type": "JobSkipped", "event": {"at": 1.0, "job": "nojob", "reason": "x"}})
    with pytest.raises(wire.WireError, match="snapshot: missing field 'views'"):
        wire.decode_snapshot({"now": 1.0})
    # An event whose body is not an object: a sentence naming the event, not a TypeError.
    with pytest.raises(wire.WireError, match="event Paused: expected an object, got int"):
        wire.decode_event({"type": "Paused", "event": 5})
    with pytest.raises(wire.WireError, match=r"event AnchorStarted\.jobs: expected a list"):
        wire.decode_event({"type": "AnchorStarted", "event": {"at": 1.0, "target": "t", "jobs": "a/b", "digest": "d"}})


def test_reload_and_verify_results_round_trip():
    result = ReloadResult(applied=False, changed=False, errors=["config.yaml:4: every: not a duration"], summary="rejected")
    back = wire.decode_reload_result(through_json(wire.encode_reload_result(result)))
    assert (back.applied, back.changed, back.errors, back.summary) == (False, False, result.errors, "rejected")
    for verdict in (VerifyResult(VerifyOutcome.OK, "fine", "a/b"), VerifyResult(VerifyOutcome.CANNOT_CHECK, "no bundle")):
        assert wire.decode_verify_result(through_json(wire.encode_verify_result(verdict))) == verdict


def test_verify_and_the_control_api_have_the_same_four_outcomes():
    """verify's words are the control API's (ctl verify, the dashboard's v): PENDING too."""
    from core.verify import Outcome
    from tui.dashboard import VERIFY_WORD

    assert [o.value for o in VerifyOutcome] == [o.label for o in Outcome] == ["OK", "FAIL", "CANNOT CHECK", "PENDING"]
    assert [o.exit_code for o in Outcome] == [0, 1, 3, 4]
    assert set(VERIFY_WORD) == set(VerifyOutcome) and VERIFY_WORD[VerifyOutcome.PENDING] == "PENDING"
    young = VerifyResult(VerifyOutcome.PENDING, "transaction 0xab is 1 of 3 blocks deep: genuine, not final yet", "a/b")
    assert wire.decode_verify_result(through_json(wire.encode_verify_result(young))) == young
