"""One record per job: its spec, state, due time, held attestation and why it is disabled.

Also the rules that turn a job's state into the next one (`succeeded`, `not_after`) and the
two small values a pass hands around: `Due` (a job to anchor now, with the batch read for
it) and `Held` (an attestation obtained whose receipts are not all written yet).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from core.anchors.base import Attestation
from core.jobs import JobSpec, JobState
from core.sources import Batch
from core.store import Intent


@dataclass
class Due:
    """A job a pass anchors now, with the batch read for it; `forced` by an operator."""

    spec: JobSpec
    batch: Batch
    forced: bool


@dataclass(eq=False)
class Held:
    """An attestation obtained whose receipts are not all written yet (storage failed)."""

    intent: Intent
    attestation: Attestation
    durable: bool  # the attestation is in the intent file on disk
    arrived: float | None = None  # when it reached the scheduler (None: not known, e.g. recovered)


@dataclass(eq=False, slots=True)
class JobRecord:
    """Everything the engine keeps about one configured job."""

    spec: JobSpec
    state: JobState
    due: float | None = None  # its live due time (None: not scheduled: in flight, disabled)
    held: Held | None = None  # its attestation waits for its receipt (never paid twice)
    disabled: str | None = None  # its target is refused: the reason (never scheduled)
    enabled_at: float | None = None  # a reload added or enabled the job then
    storage_failing: str | None = None  # its last failure was `storage`: the message


@dataclass(eq=False, slots=True)
class Remains:
    """What an anchor under way left of a job a reload removed meanwhile: its state, a held
    attestation, a storage failure. Kept (and saved) as they were; a reload that adds the
    job again takes them back (its held attestation is written, never paid twice)."""

    state: JobState | None = None
    held: Held | None = None
    storage_failing: str | None = None


def succeeded(previous: JobState, root: str, receipt: Path | None, now: float) -> JobState:
    """A job's state once `root` is anchored at `now` with its receipt at `receipt`: every
    field set but `row`, kept (made directly: dataclasses.replace took 2.5 us, twice a
    receipt)."""
    return JobState(
        row=previous.row,
        last_anchored_at=now,
        last_root=root,
        failures=0,
        backoff_level=0,
        next_attempt=None,
        last_error_kind=None,
        last_error=None,
        last_receipt=None if receipt is None else str(receipt),
        last_attempt_at=now,
        current_at=now,
    )


def anchored_since(state: JobState, intent: Intent) -> bool:
    """The job was anchored (by this replica or another) after `intent` was opened."""
    return state.last_anchored_at is not None and state.last_anchored_at > intent.opened_at


def not_after(state: JobState, now: float) -> JobState:
    """A loaded state whose past lies in the future was saved before the wall clock went
    back: all its times move back by that much, so its next due time and its staleness do
    not wait for the wall clock to catch up."""
    past = [t for t in (state.last_anchored_at, state.last_attempt_at, state.current_at) if t is not None]
    ahead = max(past, default=now) - now
    if ahead <= 0:
        return state

    def back(t: float | None) -> float | None:
        return None if t is None else t - ahead

    return replace(
        state,
        last_anchored_at=back(state.last_anchored_at),
        last_attempt_at=back(state.last_attempt_at),
        current_at=back(state.current_at),
        next_attempt=back(state.next_attempt),
    )
