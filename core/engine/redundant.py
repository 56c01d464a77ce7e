"""Redundant anchoring: one group's digest sent to several targets, `min` of which must attest.

A redundant job's target is core.jobs.redundant_target ("2 of rfc3161:a,rfc3161:b,eip155:8453").
One intent per group records the digest and (in its target text) every target; each target
is called on its own task with its own backoff (`TargetHealth`), and each attestation is
noted into the intent (`notes["attested"][<target>]`, durable) before it counts. Once `min`
are in, the others get at most GRACE seconds more; then the group's ONE attestation, every
one obtained (`{"min", "attestations": [...]}`), goes through the usual commit
(core/engine/commit.py) and each job gets one receipt of version 3 (docs/receipts.md).

A target still backing off is not asked until its retry time, unless leaving it out would
leave fewer than `min` targets to ask. Fewer than `min` attestations: the jobs fail and back
off as any failure, and the attestations obtained are kept (`Redundancy.kept`, by digest) so
the next try for the same digest does not ask (and pay) those targets again. A crash after
`min` were noted: recovery (core/engine/recovery.py, `from_notes`) writes the receipts and
never calls the targets again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from core.anchors.base import Attestation
from core.anchors.schemes import SCHEMES
from core.engine.context import Context
from core.errors import AnchorError, ErrorKind, NetworkError, StorageError, classify, describe
from core.events import TargetAnswered
from core.jobs import redundant_parts
from core.receipts import ANCHORED_AT_LATE, iso_utc
from core.store import Intent
from core.views import TargetView

GRACE = 2.0  # seconds the remaining targets get once `min` attestations are in
KEEP_FOR = ANCHORED_AT_LATE / 2  # a kept attestation is used again only while this young


@dataclass
class TargetHealth:
    """One target's own backoff, and what it last did (shown per target: detail view,
    /health, metrics)."""

    failures: int = 0
    level: int = 0
    retry_at: float | None = None  # wall clock; None: ask it at the next anchor
    last_error: str | None = None
    last_attested_at: float | None = None


def attested_fact(target: str, attestation: Attestation, required: int) -> dict[str, Any]:
    """One target's attestation as a version 3 receipt carries it (core.receipts.Attested):
    the job's depth required where the target's proofs deepen."""
    deepens = SCHEMES[target.partition(":")[0]].confirmations
    return {
        "target": target,
        "attestation": attestation.data,
        "status": attestation.status,
        "confirmations": {"required": required if deepens else 0, "observed": attestation.confirmations},
    }


def combined(least: int, members: tuple[str, ...], facts: dict[str, dict[str, Any]]) -> Attestation:
    """The group's one attestation: every target's in the configured order; `confirmed` once
    `min` of them are."""
    items = [facts[t] for t in members if t in facts]
    final = sum(item["status"] == "confirmed" for item in items)
    return Attestation({"min": least, "attestations": items}, "confirmed" if final >= least else "pending", 0)


def from_notes(intent: Intent) -> Attestation | None:
    """The group's attestation from what a redundant intent noted, when at least `min`
    attestations were noted (recovery after a crash: no target is asked again)."""
    parts = redundant_parts(intent.target)
    noted = intent.notes.get("attested")
    if parts is None or not isinstance(noted, dict) or len(noted) < parts[0]:
        return None
    return combined(parts[0], parts[1], noted)


class Redundancy:
    """The per-target state of redundant jobs, and the calls of one group."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.health: dict[str, TargetHealth] = {}
        # (target text, digest hex) -> {target: (attestation, when obtained)}: paid for, kept
        self.kept: dict[tuple[str, str], dict[str, tuple[Attestation, float]]] = {}
        self.kinds: dict[str, set[ErrorKind]] = {}  # intent id -> its targets' failure kinds

    def views(self, target: str) -> tuple[TargetView, ...]:
        """Each target of a redundant job's target text as shown (empty for a single target)."""
        parts = redundant_parts(target)
        if parts is None:
            return ()
        out = []
        for member in parts[1]:
            h = self.health.get(member, TargetHealth())
            out.append(TargetView(member, h.last_attested_at, h.failures, h.retry_at, h.last_error))
        return tuple(out)

    def chosen(self, members: tuple[str, ...], least: int, now: float) -> list[str]:
        """The targets to ask now: those not backing off; and, when they are fewer than
        `min`, the ones whose retry time comes first, up to `min`."""
        def ready(t: str) -> bool:
            h = self.health.get(t)
            return h is None or h.retry_at is None or h.retry_at <= now

        ask = [t for t in members if ready(t)]
        if len(ask) < least:
            waiting = sorted((t for t in members if not ready(t)), key=lambda t: self.health[t].retry_at or 0.0)
            ask += waiting[: least - len(ask)]
        return [t for t in members if t in ask]

    def _succeeded(self, intent: Intent, target: str, now: float) -> None:
        self.health[target] = TargetHealth(last_attested_at=now)
        self.ctx.bus.publish(TargetAnswered(at=now, jobs=tuple(intent.jobs), target=target, attested=True))

    def _failed(self, intent: Intent, target: str, exc: BaseException, now: float) -> None:
        h = self.health.setdefault(target, TargetHealth())
        kind = classify(exc)
        h.failures += 1
        h.retry_at = now + self.ctx.policy.delay(h.level, kind)
        h.level = min(h.level + 1, self.ctx.policy.max_level)
        h.last_error = describe(exc)
        self.ctx.log.warning(
            "a target of a redundant anchor failed; the others go on", target=target,
            error=h.last_error, retry_at=h.retry_at,
        )
        self.ctx.bus.publish(TargetAnswered(
            at=now, jobs=tuple(intent.jobs), target=target, attested=False, retry_at=h.retry_at, error=h.last_error,
        ))

    async def gather(
        self, intent: Intent, digest: bytes, policy: str | None, required: int
    ) -> tuple[Attestation | None, str]:
        """Ask the targets of a redundant intent; (the group's attestation, or None when fewer
        than `min` attested; a sentence on the targets that did not). `kinds` keeps the
        failures' kinds: the job backs off by theirs when they agree (`failure`)."""
        parts = redundant_parts(intent.target)
        assert parts is not None
        least, members = parts
        ctx = self.ctx
        now = ctx.clock.now()
        facts: dict[str, dict[str, Any]] = {}
        obtained: dict[str, tuple[Attestation, float]] = {}
        for target, (attestation, at) in self.kept.pop((intent.target, intent.digest), {}).items():
            if now - at <= KEEP_FOR:
                facts[target] = self._note(intent, target, attestation, required)
                obtained[target] = (attestation, at)
        errors: dict[str, str] = {}
        self.kinds[intent.id] = set()
        ask = [t for t in self.chosen(members, least, now) if t not in facts]
        tasks = {asyncio.ensure_future(self._call(intent, t, digest, policy)): t for t in ask}
        running = set(tasks)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GRACE if len(facts) >= least else None  # min kept from a failed try
        try:
            # Every target is waited for until `min` are in (one that answers late is still
            # kept: it may have been paid for), then for GRACE at most.
            while running:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, running = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break  # the grace is over
                for task in done:
                    target = tasks[task]
                    exc = task.exception()
                    if exc is None:
                        attestation = task.result()
                        obtained[target] = (attestation, ctx.clock.now())
                        try:
                            facts[target] = self._note(intent, target, attestation, required)
                        except StorageError as err:
                            exc = err
                        else:
                            self._succeeded(intent, target, ctx.clock.now())
                    if exc is not None:
                        errors[target] = describe(exc)
                        self.kinds[intent.id].add(classify(exc))
                        self._failed(intent, target, exc, ctx.clock.now())
                if len(facts) >= least and deadline is None:
                    deadline = loop.time() + GRACE
        finally:
            for task in running:
                task.cancel()
                target = tasks[task]
                exc = NetworkError(
                    f"no answer within the {GRACE:g} s grace after {least} others attested"
                    if deadline is not None else "no answer before the scheduler stopped"
                )
                errors[target] = str(exc)
                self._failed(intent, target, exc, ctx.clock.now())
            await asyncio.gather(*running, return_exceptions=True)
        skipped = [t for t in members if t not in facts and t not in errors]
        for target in skipped:
            h = self.health[target]
            errors[target] = f"skipped, backing off until {iso_utc(h.retry_at or now)}"
        why = "; ".join(f"{t}: {e}" for t, e in errors.items())
        if len(facts) >= least:
            self.kinds.pop(intent.id, None)
            return combined(least, members, facts), why
        if obtained:  # paid for: used again by the next try of this digest
            self.kept[(intent.target, intent.digest)] = obtained
        return None, f"{len(facts)} of the {least} attestations required ({why})"

    def failure(self, intent: Intent, why: str) -> AnchorError:
        """The error a group that got fewer than `min` attestations fails with: of the kind
        its targets' failures share (all refused credentials: auth), else network."""
        kinds = self.kinds.pop(intent.id, set())
        return AnchorError(why, kind=kinds.pop() if len(kinds) == 1 else ErrorKind.NETWORK)

    async def _call(self, intent: Intent, target: str, digest: bytes, policy: str | None) -> Attestation:
        backend = self.ctx.backend_for(target)
        return await backend.anchor(digest, self._backend_note(intent, target), policy=policy)

    @staticmethod
    def _backend_note(intent: Intent, target: str) -> Any:
        """`intent.note` for one target's backend: its facts under notes["targets"][target]."""

        def note(facts: dict[str, Any]) -> None:
            intent.notes.setdefault("targets", {}).setdefault(target, {}).update(facts)
            try:
                intent.persist()
            except OSError as exc:
                raise StorageError("journal", str(intent.path), exc) from exc

        return note

    @staticmethod
    def _note(intent: Intent, target: str, attestation: Attestation, required: int) -> dict[str, Any]:
        """One attestation noted into the intent, durably, before it counts."""
        fact = attested_fact(target, attestation, required)
        intent.notes.setdefault("attested", {})[target] = fact
        try:
            intent.persist()
        except OSError as exc:
            del intent.notes["attested"][target]
            raise StorageError("journal", str(intent.path), exc) from exc
        return fact
