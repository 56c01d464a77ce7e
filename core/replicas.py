"""What one scheduler of a cluster says about itself (the replica registry's rows).

With the file store a scheduler is alone and there is no registry; with PostgreSQL every
replica writes its row and heartbeat (core/pgstore.py) and any replica can list them all:
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

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id, "host": self.host, "pid": self.pid, "version": self.version,
            "config_hash": self.config_hash, "in_flight": self.in_flight,
            "heartbeat_at": self.heartbeat_at, "started_at": self.started_at,
            "alive": self.alive, "this": self.this,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> ReplicaInfo:
        return cls(
            id=str(doc["id"]), host=str(doc["host"]), pid=int(doc["pid"]),  # type: ignore[call-overload]
            version=str(doc["version"]), config_hash=str(doc["config_hash"]),
            in_flight=int(doc["in_flight"]),  # type: ignore[call-overload]
            heartbeat_at=float(doc["heartbeat_at"]),  # type: ignore[arg-type]
            started_at=float(doc["started_at"]),  # type: ignore[arg-type]
            alive=bool(doc["alive"]), this=bool(doc.get("this", False)),
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


class ClusterView(Protocol):
    """What the rest of the program reads of cluster mode (core/cluster.py Cluster)."""

    kind: str

    @property
    def store_problem(self) -> str | None: ...

    def replicas(self) -> list[ReplicaInfo]: ...
