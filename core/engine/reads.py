"""The batch reads of a pass: a pass first reads the due jobs' batch folders on reader
threads (core.sources.prefetch), waiting while they make progress (core.readers
`Patience`): until BATCH_READ_WAIT passed without one answering, or BATCH_READ_MOST in
all; `_take` then never reads on the loop a folder that was not read for it (a dead mount
would stop everything). Folders more than BATCH_READ_MOST reads take two passes: the
first takes what was read, and its receipts are written while the next pass's reads go
on; that pass, with anchors under way, waits for the rest (BATCH_READ_BUSY at most), so
they anchor in one more pass. A fixed 1 s wait left most of them to be looked at again
every second, pass after pass, and a folder whose read ended between two passes was read
again, queued behind every other read.

BATCH_READ_MOST was 1 s (100,000 folders in two passes: their receipts overlapped the
reads when both ran on one GIL). With the receipts written by their own process
(core/store/files/receipt_process.py), a second pass cost more than the overlap gave: its
due pass, claim, tree, intent and call again (~2 s at 100,000), beside reads slowed by the
first pass's receipts. 100,000 folders read in one pass anchored 1.3-3.5 s sooner (three
pairs). A folder that does not answer still ends the wait after BATCH_READ_WAIT."""

from __future__ import annotations

from core.engine.context import Context
from core.engine.outcomes import Outcomes
from core.jobs import JobKey, JobSpec
from core.sources import SourceError

BATCH_READ_WAIT = 1.0  # seconds a pass waits for its batch folders without any answering
BATCH_READ_MOST = 30.0  # seconds a pass waits for its batch folders in all, no anchor under way
BATCH_READ_BUSY = 60.0  # the same while anchors are under way (their receipts being written)
BATCH_READ_STALL = 10.0  # seconds a folder may not answer before its jobs fail for it


class BatchReads:
    def __init__(self, ctx: Context, outcomes: Outcomes) -> None:
        self.ctx = ctx
        self.outcomes = outcomes
        self.prefetched: set[str] | None = None  # the batch folders read before this pass
        self.unanswered: dict[str, float] = {}  # of those, the ones that did not answer
        self.late: list[JobKey] = []  # due too late for the pass's read: for the next pass

    def unread(self, spec: JobSpec, now: float, *, forced: bool) -> bool:
        """Whether the job's batch folder was not read before this pass; if so, it is left
        for later and never read on the loop (a dead mount would stop everything). Named
        too late for the pass's read: the next pass reads it first. Named but not answering:
        looked at again in a second, and failed (backing off, naming the folder) once it
        has not answered for BATCH_READ_STALL seconds or when an operator forced it."""
        if self.prefetched is None:
            return False  # a pass without a read first (run_due): it reads by itself
        table = self.ctx.table
        source = str(spec.source)
        waited = self.unanswered.get(source)
        if waited is None:
            if source in self.prefetched:
                return False
            if forced:
                table.forced.add(spec.key)
            else:  # not scheduled at `now` here: the pass drains the heap up to `now`
                self.late.append(spec.key)
            return True
        if forced or waited >= BATCH_READ_STALL:
            error = SourceError(
                f"batch folder {source} has not answered for {waited:.0f} s (a hung mount?); "
                "the other namespaces go on, this one is tried again as it backs off"
            )
            self.outcomes.fail(spec, error, duration=0.0)
        else:
            table.schedule(spec.key, now + min(self.ctx.tick, 1.0))
        return True

    def pass_done(self, now: float) -> None:
        """The pass has taken what was due: the jobs it left for being due too late for its
        read are due now, for the next pass (which reads their folders first)."""
        table, late = self.ctx.table, self.late
        self.prefetched, self.late = None, []
        for key in late:
            if key in table:
                table.schedule(key, now)
