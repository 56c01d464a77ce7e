"""What is in flight: the jobs whose anchor is under way in this scheduler.

One `Flight` per engine is the only way a job enters flight (`board`) or leaves it
(`land`). The scheduling pass, a forced anchor, the retry of a kept attestation, and the
recovery or take-over of an intent all board through it, and `board` takes only jobs not
already aboard: no two of them can ever hold one job at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from core.jobs import JobKey


class Flight:
    def __init__(self) -> None:
        self._since: dict[JobKey, float] = {}  # each job aboard, and when it boarded

    def board(self, keys: Iterable[JobKey], at: float) -> list[JobKey]:
        """Take these jobs into flight at `at`; the ones taken (a job already aboard is not)."""
        taken: list[JobKey] = []
        for key in keys:
            if key not in self._since:
                self._since[key] = at
                taken.append(key)
        return taken

    def land(self, key: JobKey) -> bool:
        """The job leaves flight; False when it was not aboard."""
        if self._since.pop(key, None) is None:
            return False
        if not self._since:  # a dict keeps its largest table: a pass of 100,000 jobs left ~3 MB
            self._since = {}
        return True

    def since(self, key: JobKey) -> float | None:
        return self._since.get(key)

    def keys(self) -> frozenset[JobKey]:
        return frozenset(self._since)

    def __contains__(self, key: object) -> bool:
        return key in self._since

    def __iter__(self) -> Iterator[JobKey]:
        return iter(tuple(self._since))

    def __len__(self) -> int:
        return len(self._since)
