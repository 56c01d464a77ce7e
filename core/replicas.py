"""What one scheduler of a cluster says about itself (the replica registry's rows).

With the file store a scheduler is alone and there is no registry; with PostgreSQL every
replica writes its row and heartbeat (core/store/postgres/) and any replica can list them all:
the dashboard's Replicas pane, the control API's snapshot, /health's config-hash check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    id: str  # unique per process start: "<host>-<pid>-<random>"
    host: str
    pid: int
    version: str
    config_hash: str
    in_flight: int  # jobs this replica holds a lease on and is anchoring
    heartbeat_at: float  # wall-clock epoch seconds of its last heartbeat (the store's clock)
    started_at: float  # wall-clock epoch seconds
    alive: bool  # heartbeat within the store's liveness window
    this: bool = False  # the replica that answers (the one the dashboard is attached to)
    # Its wall clock minus the database's at its last heartbeat, s (None: not known: only
    # this replica's is, unless the registry has the column), and why it claims no jobs
    # (None: it claims, or not known). core/cluster.py
    clock_offset: float | None = None
    refusal: str | None = None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "id": self.id, "host": self.host, "pid": self.pid, "version": self.version,
            "config_hash": self.config_hash, "in_flight": self.in_flight,
            "heartbeat_at": self.heartbeat_at, "started_at": self.started_at,
            "alive": self.alive, "this": self.this,
        }
        if self.clock_offset is not None:
            doc["clock_offset"] = self.clock_offset
        if self.refusal is not None:
            doc["refusal"] = self.refusal
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> ReplicaInfo:
        return cls(
            id=str(doc["id"]), host=str(doc["host"]), pid=int(doc["pid"]),  # type: ignore[call-overload]
            version=str(doc["version"]), config_hash=str(doc["config_hash"]),
            in_flight=int(doc["in_flight"]),  # type: ignore[call-overload]
            heartbeat_at=float(doc["heartbeat_at"]),  # type: ignore[arg-type]
            started_at=float(doc["started_at"]),  # type: ignore[arg-type]
            alive=bool(doc["alive"]), this=bool(doc.get("this", False)),
            clock_offset=None if doc.get("clock_offset") is None else float(doc["clock_offset"]),  # type: ignore[arg-type]
            refusal=None if doc.get("refusal") is None else str(doc["refusal"]),
        )


def config_hash_warning(replicas: list[ReplicaInfo] | tuple[ReplicaInfo, ...]) -> str | None:
    """A warning when live replicas run different configs (None when they agree)."""
    hashes: dict[str, list[str]] = {}
    for replica in replicas:
        if replica.alive:
            hashes.setdefault(replica.config_hash, []).append(f"{replica.host}:{replica.pid}")
    if len(hashes) <= 1:
        return None
    parts = [f"{h[:12]} on {', '.join(names)}" for h, names in sorted(hashes.items())]
    return "replicas run different configs: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class ClockReading:
    """This replica's wall clock against the database's, as one heartbeat read them."""

    offset: float  # ours minus the database's, s (positive: ours is ahead)
    uncertainty: float  # half the round trip: the true offset is within +/- this

    @classmethod
    def measure(cls, before: float, database: float, after: float) -> ClockReading:
        """From our clock read `before` and `after` the database's (`database`): the
        database read it somewhere in between, best taken as the midpoint."""
        return cls(offset=(before + after) / 2 - database, uncertainty=max(0.0, after - before) / 2)


class ClusterView(Protocol):
    """What the rest of the program reads of cluster mode (core/cluster.py Cluster).
    `clock` and `clock_problem` are optional (read with getattr: core.control.clock_status)."""

    kind: str

    @property
    def store_problem(self) -> str | None: ...

    def replicas(self) -> list[ReplicaInfo]: ...
