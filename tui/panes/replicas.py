"""The Replicas pane: the schedulers sharing this one's store (core/replicas.py ReplicaInfo).

One row per replica of a PostgreSQL cluster: host, pid, version, config hash, jobs in
flight, how long ago it last beat, and whether it is alive, lost, `off` (alive but out of
the claim rotation: its clock is off the database's) or `this` one (the replica the
dashboard talks to; in the warning colour when it claims nothing). With the file store a
scheduler runs alone and the pane says so in one line. Live replicas running different
configs, a store that does not answer, or this replica claiming nothing (and why) are said
in the pane's title and as a badge in the header (`cluster_badges`). Enter on a row shows
its clock's offset from the database's, when known.

Heartbeat times are the store's wall clock; ages are taken against the snapshot's `now`
(the engine's steady clock, wall time as of its start), so they need no clock of their own
and are the same on an attached dashboard as in process.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from textual.screen import Screen

from core.control import Snapshot
from core.jobs import JobKey
from core.replicas import ReplicaInfo, config_hash_warning
from core.text import printable
from tui.panes.base import PaneContext, PaneSource
from tui.rows import Cell, Palette, age
from tui.screens import MessageScreen
from tui.widgets import Columns, DiffTable, Pane

REPLICA_COLUMNS: Columns = (
    ("host", "Host", None),
    ("pid", "PID", 7),
    ("version", "Version", 8),
    ("config", "Config", 12),
    ("jobs", "Jobs", 4),  # in flight on that replica
    ("heartbeat", "Heartbeat", 9),
    ("state", "State", 5),
)
# The file store's line, headerless; a second, empty column because rows sort by their
# first two cells (DiffTable._sort).
STORE_COLUMNS: Columns = (("store", "Store", None), ("none", "", 1))
FILE_STORE_LINE = "file store: this scheduler runs alone (scheduler.store)"
HASH_SHOWN = 12
STATE_ROLE = {"this": "accent", "alive": "success", "lost": "error", "off": "warning"}
STATES = ("this", "alive", "off", "lost")  # the State column's sort order


def replica_state(replica: ReplicaInfo) -> str:
    if replica.this:
        return "this"
    if not replica.alive:
        return "lost"
    return "off" if replica.refusal is not None else "alive"


def state_role(replica: ReplicaInfo) -> str:
    state = replica_state(replica)
    return "warning" if state == "this" and replica.refusal is not None else STATE_ROLE[state]


def this_refusal(replicas: tuple[ReplicaInfo, ...]) -> str | None:
    """Why the replica the dashboard talks to claims no jobs (None: it claims)."""
    return next((r.refusal for r in replicas if r.this and r.refusal is not None), None)


def reference_hash(replicas: tuple[ReplicaInfo, ...]) -> str | None:
    """The config hash others are compared with: this replica's, else the live majority's."""
    for replica in replicas:
        if replica.this:
            return replica.config_hash
    live = Counter(r.config_hash for r in replicas if r.alive)
    return live.most_common(1)[0][0] if live else None


def replica_row(replica: ReplicaInfo, now: float, reference: str | None, p: Palette) -> tuple[Cell, ...]:
    state = replica_state(replica)
    differs = reference is not None and replica.alive and replica.config_hash != reference
    since = now - replica.heartbeat_at
    muted = "" if replica.alive else "muted"
    return (
        p.cell(printable(replica.host), role=muted),
        p.cell(str(replica.pid), replica.pid, muted),
        p.cell(printable(replica.version), role=muted),
        p.cell(printable(replica.config_hash[:HASH_SHOWN]), role="warning" if differs else muted),
        p.cell(str(replica.in_flight), replica.in_flight, muted),
        p.cell(f"{age(since)} ago", since, "error" if not replica.alive else ""),
        p.cell(state, STATES.index(state), state_role(replica)),
    )


def replica_lines(replica: ReplicaInfo, now: float) -> list[str]:
    """Everything the registry says of one replica (what enter shows)."""

    def when(epoch: float) -> str:
        at = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{at} ({age(now - epoch)} ago)"

    return [
        f"id:          {printable(replica.id)}",
        f"host:        {printable(replica.host)}",
        f"pid:         {replica.pid}",
        f"version:     {printable(replica.version)}",
        f"config hash: {printable(replica.config_hash)}",
        f"in flight:   {replica.in_flight} job(s)",
        f"started:     {when(replica.started_at)}",
        f"heartbeat:   {when(replica.heartbeat_at)}",
        f"state:       {replica_state(replica)}",
        "clock:       " + ("not known" if replica.clock_offset is None
                           else f"{replica.clock_offset:+.3f} s off the database's"),
        "claims:      " + ("yes" if replica.refusal is None else f"none: {printable(replica.refusal)}"),
    ]


def cluster_note(snapshot: Snapshot) -> str | None:
    """What the pane's title adds: the store not answering, live replicas' configs differing."""
    store = snapshot.store
    if not store.ok:
        return f"{store.kind} store unreachable: {store.error or 'no reason given'}"
    refusal = this_refusal(snapshot.replicas)
    if refusal is not None:
        return f"claiming no jobs: {printable(refusal)}"
    return config_hash_warning(snapshot.replicas)


def cluster_badges(snapshot: Snapshot) -> list[tuple[str, str]]:
    """(text, theme role) of the header's badges for the store and the replicas."""
    badges = []
    if not snapshot.store.ok:
        badges.append(("STORE DOWN", "error"))
    elif this_refusal(snapshot.replicas) is not None:
        badges.append(("NOT CLAIMING", "warning"))
    if config_hash_warning(snapshot.replicas):
        badges.append(("CONFIGS DIFFER", "warning"))
    return badges


class ReplicaTable(DiffTable):
    """A DiffTable whose columns follow the store: the replicas, or the file store's line."""

    def set_columns(self, columns: Columns, *, header: bool = True) -> None:
        if columns == self.column_spec:
            return
        compact = self.compact
        self.show_header = header
        self.clear(columns=True)
        self._shown, self.all_rows = {}, {}
        self.column_spec, self.sort_index, self.sort_reverse = columns, 0, False
        for key, label, width in columns:
            self.add_column(label, key=key, width=width)
        self._update_sort_labels()
        self.compact, self.cell_padding = False, 1  # as made; set_compact applies the layout's
        self.set_compact(compact)


class ReplicasPane(PaneSource):
    name = "replicas"
    wide_row = 1
    title = "Replicas"
    no_job = "replicas are not jobs: select a job in Namespaces (1)"

    def __init__(self, ctx: PaneContext) -> None:
        super().__init__(ctx)
        self.file_store = False
        self.replicas: dict[str, ReplicaInfo] = {}
        self.now = 0.0
        self.note: str | None = None

    def make_body(self) -> ReplicaTable:
        return ReplicaTable(REPLICA_COLUMNS, id=self.name)

    def show(self, snapshot: Snapshot) -> None:
        table = self.body
        assert isinstance(table, ReplicaTable)
        self.now = snapshot.now
        self.file_store = snapshot.store.kind == "file"
        if self.file_store:
            self.replicas = {}
            p = self.ctx.palette
            table.set_columns(STORE_COLUMNS, header=False)
            table.show({"file": (p.cell(FILE_STORE_LINE, role="muted"), p.cell(""))})
        else:
            self.replicas = {r.id: r for r in snapshot.replicas}
            reference, p = reference_hash(snapshot.replicas), self.ctx.palette
            table.set_columns(REPLICA_COLUMNS)
            table.show({r.id: replica_row(r, snapshot.now, reference, p) for r in snapshot.replicas})
        self._title(cluster_note(snapshot))

    def _title(self, note: str | None) -> None:
        box = self.body.parent
        if note != self.note and isinstance(box, Pane):
            self.note = note
            box.border_title = box.title if note is None else f"{box.title}: {note}"

    def tab_label(self, snapshot: Snapshot | None) -> str:
        if snapshot is None or snapshot.store.kind == "file":
            return self.title
        alive = sum(r.alive for r in snapshot.replicas)
        return f"{self.title} ({alive})"

    def selected_job(self) -> JobKey | None:
        return None  # a row is a replica, not a job

    def detail(self) -> Screen[None] | str | None:
        replica = self.replicas.get(self.table.selected_key or "")
        if replica is None:
            return FILE_STORE_LINE if self.file_store else "no replica selected"
        title = f"Replica {printable(replica.host)}:{replica.pid}"
        return MessageScreen(title, replica_lines(replica, self.now), error=False)
