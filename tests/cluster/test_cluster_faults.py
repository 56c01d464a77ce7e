"""Faults a production cluster meets, on real processes (`vmsh-scheduler --no-ui` replicas,
one real PostgreSQL, one real RFC 3161 TSA): a replica frozen for longer than its lease
(a stalled VM, a long GC or swap storm: SIGSTOP, then SIGCONT), and replicas killed with
SIGKILL on a machine whose CPUs are saturated.

Each test counts from the database and the TSA itself:

- no doubles: never two receipts for one (job, root);
- nothing lost: every root that stayed a namespace's latest long enough has a receipt, and
  every namespace's last root is anchored;
- every paid token accounted for: each token the TSA granted is either the token of a tree
  in the receipts table (one tree per call, so one distinct `anchored_root` per token) or
  counted as discarded (`vmsh_tokens_discarded_total{reason}`, and its "attestation
  discarded" log line). A replica killed with SIGKILL can die holding a token it was just
  granted: the replica that resolves its intent counts it ("unrecovered").

Durations are module constants: the suite runs in CI on 2 cores within a time budget.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from asn1crypto import tsp as asn1tsp
from prometheus_client.parser import text_string_to_metric_families

from tests import pki
from tests.integration.tsa_servers import OpenSSLTSA

from .cluster_rig import ClusterRig, wait_until
from .postgres import PASSWORD
from .test_cluster_processes import Publisher, lost, start_replicas

NAMESPACES = [f"ns{n:02d}" for n in range(60)]
EVERY = "2s"
LEASE = 3.0  # seconds; a replica's heartbeat (and lease renewal) runs every LEASE / 3
PUBLISH_RATE = 5.0  # new roots per second, over all namespaces
REPLICAS = ["a", "b", "c"]

# Freezes: each replica in turn stopped (SIGSTOP) for 2.5 leases, then all left running for
# THAWED_SECONDS before the next freeze (on the next replica).
FREEZES = 4
FREEZE_SECONDS = 2.5 * LEASE
THAWED_SECONDS = 3.0
# Where each freeze lands in the victim's next anchor, in turn (see signal_when): once the
# TSA signed its token, before the reply leaves; or as the call goes out.
FREEZE_AIMS = ("token", "start")
AIM_SECONDS = 2.0  # how long an aimed signal waits for the victim's next anchor
# A frozen replica's jobs pass to another within about a lease and a heartbeat (~5 s);
# a root that stayed latest this long was due while no replica was frozen on it.
FREEZE_SETTLE = 15.0

# CPU load: BURNERS busy-looping processes beside the replicas; one replica killed with
# SIGKILL every KILL_EVERY seconds for LOAD_SECONDS and started again at once.
BURNERS = 2
KILL_EVERY = 10.0
LOAD_SECONDS = 40.0
LOAD_SETTLE = 20.0
# Every other kill lands once the TSA signed the victim's token (which it never receives:
# one paid token lost uncounted), the others at any instant.
KILL_AIMS = ("token", "any")

LAST_ANCHORS_TIMEOUT = 40.0  # after the publisher stops: every namespace's last root anchored
QUIET_SECONDS = 2.0  # no token granted for this long: nothing more is in flight


@dataclass
class Granted:
    """One token the TSA granted: the imprint it signed (hex) and when (monotonic)."""

    imprint: str
    at: float


class TokenCounter:
    """Counts the tokens the TSA actually granted (a 200 with a granted TimeStampResp), by
    wrapping the server's handler: a request the TSA refused or failed is no paid token.

    `arm(imprint, hit)`: `hit()` runs in the TSA's thread once the token for `imprint` is
    signed, before the reply is sent (to stop or kill the replica that asked for it)."""

    def __init__(self, tsa: OpenSSLTSA) -> None:
        self.granted: list[Granted] = []
        self._armed: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        httpd: Any = tsa.http.httpd
        self._app = httpd.app
        httpd.app = self._handle

    def _handle(self, path: str, body: bytes, headers: Any) -> tuple[int, str, bytes]:
        status, ctype, data = self._app(path, body, headers)
        if status == 200 and asn1tsp.TimeStampResp.load(data)["status"]["status"].native == "granted":
            imprint = pki.query_fields(body)["imprint"].hex()
            with self._lock:
                self.granted.append(Granted(imprint, time.monotonic()))
                hit = self._armed.pop(imprint, None)
            if hit is not None:
                hit()
        return status, ctype, data

    def arm(self, imprint: str, hit: Callable[[], None]) -> bool:
        """False (and nothing armed) when a token for `imprint` was already granted."""
        with self._lock:
            if any(g.imprint == imprint for g in self.granted):
                return False
            self._armed[imprint] = hit
            return True

    def disarm(self, imprint: str) -> None:
        with self._lock:
            self._armed.pop(imprint, None)

    def quiet(self, seconds: float = QUIET_SECONDS) -> bool:
        """No token granted in the last `seconds`."""
        return not self.granted or time.monotonic() - self.granted[-1].at >= seconds


@pytest.fixture
def tsa(tmp_path: Path) -> Iterator[OpenSSLTSA]:
    server = OpenSSLTSA(tmp_path / "tsa")
    yield server
    server.stop()


# ----- what the replicas said


def log_records(rig: ClusterRig) -> dict[str, list[dict[str, Any]]]:
    """Each replica generation's JSON log records, by log file name ("a-1", "a-2", ...)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(rig.tmp.glob("*.log")):
        records = out[path.stem] = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by SIGKILL
    return out


def logged_discards(rig: ClusterRig) -> dict[str, list[dict[str, Any]]]:
    """Each generation's "attestation discarded" records (reason, intent, jobs)."""
    return {
        gen: [r for r in records if r.get("msg") == "attestation discarded"]
        for gen, records in log_records(rig).items()
    }


def scraped_discards(rig: ClusterRig, name: str) -> dict[str, float]:
    """vmsh_tokens_discarded_total by reason, from the replica's /metrics."""
    status, text = rig.http(name, "/metrics")
    assert status == 200 and isinstance(text, str), f"replica {name}'s /metrics: {status} {text!r}"
    return {
        str(s.labels.get("reason")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "vmsh_tokens_discarded_total"
    }


# ----- the count of paid tokens


@dataclass
class Tokens:
    granted: int  # tokens the TSA granted
    trees: int  # distinct anchored_root values in the receipts table
    discarded: int  # counted as discarded by the replicas
    unused: list[Granted] = field(default_factory=list)  # granted, and no receipt from their tree

    @property
    def unaccounted(self) -> int:
        return self.granted - self.trees - self.discarded

    def __str__(self) -> str:
        return (
            f"TSA granted {self.granted} tokens; receipts hold {self.trees} distinct anchored roots; "
            f"{self.discarded} discarded; {len(self.unused)} granted tokens of trees with no receipt; "
            f"unaccounted {self.unaccounted}"
        )


def count_tokens(rig: ClusterRig, counter: TokenCounter, discarded: int) -> Tokens:
    trees = {anchored.removeprefix("sha256:") for *_, anchored in rig.receipts()}
    used: set[str] = set()
    unused = []
    for g in counter.granted:
        if g.imprint in trees and g.imprint not in used:
            used.add(g.imprint)
        else:  # no receipt from this tree, or the tree stamped a second time
            unused.append(g)
    return Tokens(len(counter.granted), len(trees), discarded, unused)


def unused_by_asker(rig: ClusterRig, tokens: Tokens) -> dict[str, int]:
    """The tokens with no receipt, by the replica generation that asked for them (whose
    "anchor started" names their digest; "a-1|b-1" when several asked for one tree)."""
    askers: dict[str, list[str]] = {}
    for gen, records in log_records(rig).items():
        for r in records:
            if r.get("msg") == "anchor started":
                askers.setdefault(str(r.get("digest")), []).append(gen)
    out: dict[str, int] = {}
    for g in tokens.unused:
        who = "|".join(askers.get(g.imprint, ["?"]))
        out[who] = out.get(who, 0) + 1
    return out


def _jobs(record: dict[str, Any]) -> list[str]:
    jobs = record.get("jobs")
    return [str(j) for j in jobs] if isinstance(jobs, list) else []


def token_evidence(rig: ClusterRig, tokens: Tokens, killed: Sequence[str] = ()) -> str:
    """For a failure message: where each token with no receipt was asked for (the replica
    generation whose "anchor started" names its digest), what that generation said about
    those jobs afterwards, and each generation's discards."""
    records = log_records(rig)
    discards = logged_discards(rig)
    out = [str(tokens), f"killed generations: {list(killed)}", f"logs in {rig.tmp}"]
    for gen, items in discards.items():
        out.append(f"{gen}: {len(items)} discarded: {[(d.get('reason'), d.get('intent'), d.get('jobs')) for d in items]}")
    for g in tokens.unused:
        for gen, recs in records.items():
            for n, r in enumerate(recs):
                if r.get("msg") == "anchor started" and r.get("digest") == g.imprint:
                    jobs = set(_jobs(r))
                    out.append(f"token {g.imprint[:16]} asked by {gen} at {r.get('time')} for {sorted(jobs)[:6]}"
                               f"{' ...' if len(jobs) > 6 else ''} ({len(jobs)} jobs)")
                    after = [x for x in recs[n + 1:] if set(_jobs(x)) & jobs or x.get("job") in jobs
                             or x.get("msg") in ("attestation discarded", "shutting down", "stopped")]
                    out += [f"    {json.dumps(x)[:400]}" for x in after[:8]]
    return "\n".join(out)


def now_utc() -> str:
    """The wall clock as the replicas' log records write it (for the faults' timeline)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def double_evidence(rig: ClusterRig, faults: Sequence[str]) -> str:
    """For a failure message: each double's receipts (which replica generation wrote each,
    when), the job's batches, and every log line of every replica about the job, merged in
    time order, beside the faults' timeline."""
    records = log_records(rig)
    gens = {str(r.get("replica")): gen for gen, recs in records.items() for r in recs if r.get("msg") == "cluster mode"}
    out = [f"faults (UTC): {list(faults)}", f"logs in {rig.tmp}"]
    with psycopg.connect(rig.url, password=PASSWORD) as conn:
        for ns, cadence, batch_root in rig.doubles():
            job = f"{ns}/{cadence}"
            rows = conn.execute(
                "SELECT written_by, name, batch_root, anchored_root FROM receipts WHERE namespace = %s "
                "AND cadence = %s ORDER BY name", (ns, cadence),
            ).fetchall()
            out.append(f"--- {job} root {batch_root[:19]}: {sum(1 for r in rows if r[2] == batch_root)} receipts; "
                       f"all of {job}'s receipts (writer, name, root, tree):")
            out += [f"    {gens.get(w, w)} {name} {root[:19]} {tree[:19]}" for w, name, root, tree in rows]
            out.append(f"  batches published: {[(n + 1, r[:19]) for n, (r, _) in enumerate(rig.published[ns])]}")
            lines = sorted(
                (str(r.get("time")), gen, json.dumps(r)[:360]) for gen, recs in records.items() for r in recs
                if r.get("job") == job or job in _jobs(r)
            )
            out += [f"  {gen} {line}" for _, gen, line in lines[-60:]]
    return "\n".join(out)


# ----- faults


def next_anchor(rig: ClusterRig, name: str, timeout: float) -> str | None:
    """The digest of the replica's next "anchor started" (its TSA call is about to go out,
    or is out), or None if it starts none within `timeout` s."""
    log = rig.tmp / f"{name}-{rig.generation[name]}.log"
    with log.open("rb") as f:
        f.seek(0, 2)
        deadline = time.monotonic() + timeout
        pending = b""
        while time.monotonic() < deadline:
            pending += f.read()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if b'"msg": "anchor started"' in line:
                    return str(json.loads(line)["digest"])
            time.sleep(0.002)
    return None


def signal_when(rig: ClusterRig, counter: TokenCounter, name: str, sig: signal.Signals, aim: str) -> str:
    """Send `sig` to the replica at a chosen point of its next anchor (waiting up to
    AIM_SECONDS for one to start); where it landed.

    aim "token": once the TSA has signed its token, before the reply leaves (the replica
    never reads it before the signal); "start": as soon as it logs "anchor started" (the
    call about to go out, or out); "any": now, whatever it is doing."""
    proc = rig.procs[name]
    if aim == "any":
        proc.send_signal(sig)
        return "any time"
    digest = next_anchor(rig, name, AIM_SECONDS)
    if digest is None:
        proc.send_signal(sig)
        return "idle (no anchor started)"
    if aim == "start":
        proc.send_signal(sig)
        return "at anchor start"
    fired = threading.Event()

    def hit() -> None:
        proc.send_signal(sig)
        fired.set()

    if not counter.arm(digest, hit):
        proc.send_signal(sig)
        return "after its token was sent"
    if fired.wait(AIM_SECONDS):
        return "at its token"
    counter.disarm(digest)
    if not fired.is_set():
        proc.send_signal(sig)
        return "no token within the aim"
    return "at its token"


def thaw_all(rig: ClusterRig) -> None:
    for proc in rig.procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


def settle(rig: ClusterRig, counter: TokenCounter) -> None:
    """Every namespace's last root anchored and no token granted for QUIET_SECONDS."""
    try:
        wait_until(lambda: len(rig.anchored_latest()) == len(rig.namespaces), LAST_ANCHORS_TIMEOUT,
                   "the last roots anchored")
    except AssertionError:
        missing = sorted(set(rig.namespaces) - rig.anchored_latest())
        raise AssertionError(f"last roots not anchored for {missing}\n{rig.logs()[-4000:]}") from None
    wait_until(counter.quiet, 20, "no more tokens granted")


def counted_rig(tmp_path: Path, pg_url: str, tsa: OpenSSLTSA) -> tuple[TokenCounter, ClusterRig]:
    """The TSA's granted tokens counted, and a rig of NAMESPACES with a first root each."""
    counter = TokenCounter(tsa)
    rig = ClusterRig(tmp_path, pg_url, tsa, NAMESPACES, every=EVERY, lease=LEASE)
    for ns in NAMESPACES:
        rig.publish(ns)
    return counter, rig


def test_a_replica_frozen_for_2_5_leases_four_times_doubles_nothing_loses_nothing_pays_nothing_uncounted(
    tmp_path: Path, pg_url: str, tsa: OpenSSLTSA
) -> None:
    started = time.monotonic()
    counter, rig = counted_rig(tmp_path, pg_url, tsa)
    frozen: list[str] = []
    faults: list[str] = []  # when each freeze and thaw came (UTC, as the logs)
    scraped: dict[str, dict[str, float]] = {}
    try:
        start_replicas(rig, REPLICAS)
        with Publisher(rig, rate=PUBLISH_RATE):
            for n in range(FREEZES):
                time.sleep(THAWED_SECONDS)
                victim = REPLICAS[n % len(REPLICAS)]
                where = signal_when(rig, counter, victim, signal.SIGSTOP, FREEZE_AIMS[n % len(FREEZE_AIMS)])
                frozen.append(f"{victim} {where}")
                faults.append(f"{now_utc()} {victim} frozen {where}")
                time.sleep(FREEZE_SECONDS)
                thaw_all(rig)
                faults.append(f"{now_utc()} {victim} thawed")
            time.sleep(THAWED_SECONDS)
        settle(rig, counter)
        for name in REPLICAS:
            assert rig.procs[name].poll() is None, f"replica {name} died:\n{rig.logs()[-3000:]}"
            scraped[name] = scraped_discards(rig, name)  # just before it is stopped
    finally:
        thaw_all(rig)  # a stopped process never sees SIGTERM
        codes = rig.stop_all()
    discarded = int(sum(sum(by_reason.values()) for by_reason in scraped.values()))
    # Every replica lives: each paid token is known to the one that got it, so the tokens
    # balance exactly without the "unrecovered" count (calls whose outcome a take-over could
    # not find, counted as maybe paid: the replica that made them counts them itself).
    known = discarded - int(sum(by_reason.get("unrecovered", 0.0) for by_reason in scraped.values()))
    tokens = count_tokens(rig, counter, known)
    logged = sum(len(d) for d in logged_discards(rig).values())
    reasons = {name: {r: int(v) for r, v in by.items() if v} for name, by in scraped.items()}
    doubles, missing = rig.doubles(), lost(rig, settled_after=FREEZE_SETTLE)
    print(f"\nfrozen {frozen}, {FREEZE_SECONDS:g} s each; doubles {len(doubles)}; lost {len(missing)}; {tokens}; "
          f"discards by replica {reasons}, {logged} logged; no receipt by asker {unused_by_asker(rig, tokens)}; "
          f"receipts {len(rig.receipts())}; {time.monotonic() - started:.1f} s")
    assert codes == dict.fromkeys(REPLICAS, 0), f"{codes}\n{rig.logs()[-3000:]}"
    assert doubles == [], f"a root anchored twice for one job:\n{double_evidence(rig, faults)}"
    assert missing == [], "a root that was due has no receipt"
    assert logged == discarded, f"discards logged {logged} != counted {discarded}\n{token_evidence(rig, tokens)}"
    assert tokens.unaccounted == 0, f"paid tokens not accounted for\n{token_evidence(rig, tokens)}"


def test_kill_9_every_10_s_under_cpu_load_doubles_nothing_and_loses_nothing(
    tmp_path: Path, pg_url: str, tsa: OpenSSLTSA
) -> None:
    started = time.monotonic()
    counter, rig = counted_rig(tmp_path, pg_url, tsa)
    burners: list[subprocess.Popen[bytes]] = []
    killed: list[str] = []  # the generations killed: "a-1", ...
    landed: list[str] = []  # where each kill landed (signal_when)
    faults: list[str] = []  # when each kill came (UTC, as the logs)
    try:
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(BURNERS)]
        start_replicas(rig, REPLICAS)
        rng = random.Random(5)
        with Publisher(rig, rate=PUBLISH_RATE):
            deadline = time.monotonic() + LOAD_SECONDS
            while time.monotonic() + KILL_EVERY <= deadline + 0.5:
                victim = rng.choice(REPLICAS)
                aim = KILL_AIMS[len(killed) % len(KILL_AIMS)]
                time.sleep(KILL_EVERY - (AIM_SECONDS if aim != "any" else 0))
                where = signal_when(rig, counter, victim, signal.SIGKILL, aim)
                rig.kill(victim)
                killed.append(f"{victim}-{rig.generation[victim]}")
                faults.append(f"{now_utc()} {killed[-1]} killed {where}")
                landed.append(where)
                rig.start(victim)
        settle(rig, counter)
        for name in REPLICAS:
            assert rig.procs[name].poll() is None, f"replica {name} died:\n{rig.logs()[-3000:]}"
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        codes = rig.stop_all()
    # A killed replica's /metrics died with it: its log lines count its discards.
    discards = logged_discards(rig)
    tokens = count_tokens(rig, counter, sum(len(d) for d in discards.values()))
    by_asker = unused_by_asker(rig, tokens)
    doubles, missing = rig.doubles(), lost(rig, settled_after=LOAD_SETTLE)
    print(f"\nkilled {list(zip(killed, landed, strict=True))} under {BURNERS} CPU burners; "
          f"doubles {len(doubles)}; lost {len(missing)}; {tokens}; "
          f"discards by generation { {g: len(d) for g, d in discards.items() if d} }; no receipt by asker "
          f"{by_asker}; receipts {len(rig.receipts())}; {time.monotonic() - started:.1f} s")
    assert codes == dict.fromkeys(REPLICAS, 0), f"{codes}\n{rig.logs()[-3000:]}"
    assert len(killed) >= int(LOAD_SECONDS // KILL_EVERY)
    assert doubles == [], f"a root anchored twice for one job:\n{double_evidence(rig, faults)}"
    assert missing == [], "a root that was due has no receipt"
    # The tokens with no receipt that no killed generation asked for were all counted.
    survivors = sum(n for who, n in by_asker.items() if not set(who.split("|")) & set(killed))
    counted = sum(len(d) for gen, d in discards.items() if gen not in killed)
    assert survivors <= counted, f"tokens of live replicas unaccounted\n{token_evidence(rig, tokens, killed)}"
    # A token a killed replica died holding (granted, never journalled) is counted by the
    # replica that resolves its intent ("unrecovered": an interrupted call whose outcome
    # could not be found), so every paid token has a receipt or a counted refusal.
    assert tokens.unaccounted <= 0, (
        f"{landed.count('at its token')} kills at a granted token, {len(killed)} kills\n"
        f"{token_evidence(rig, tokens, killed)}"
    )
