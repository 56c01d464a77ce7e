"""Per target: anchor latency and failures over the last minutes, as sparklines.

`Trends` is fed the events the engine already publishes (AnchorSucceeded, AnchorFailed:
their `target`, `duration` and `at`, on the engine's clock, so a FakeClock makes it
deterministic) and keeps, per target, BUCKETS buckets of BUCKET seconds: the slowest
anchor and the failures in each. Memory is bounded: a fixed number of buckets per target
and at most MAX_TARGETS targets (the least recently heard one is forgotten first).

`TrendStrip` shows one target's two sparklines (Textual's Sparkline) with the numbers
beside them; the Namespaces pane puts it under its table for the selected job's target.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from core.cadence import format_seconds
from core.events import AnchorFailed, AnchorSucceeded, Event

BUCKET = 10.0  # seconds per sparkline column
BUCKETS = 30  # columns: the last 5 minutes
MAX_TARGETS = 256


class _Series:
    """One target's buckets, newest last; bucket n covers [n*BUCKET, (n+1)*BUCKET)."""

    __slots__ = ("failures", "last", "latency", "newest")

    def __init__(self) -> None:
        self.newest = 0  # index of the last bucket
        self.latency: deque[float] = deque([0.0] * BUCKETS, maxlen=BUCKETS)  # slowest anchor
        self.failures: deque[int] = deque([0] * BUCKETS, maxlen=BUCKETS)
        self.last: float | None = None  # the latest anchor's duration

    def roll(self, index: int) -> None:
        """Advance to bucket `index`, the buckets between empty."""
        for _ in range(min(BUCKETS, max(0, index - self.newest))):
            self.latency.append(0.0)
            self.failures.append(0)
        self.newest = max(self.newest, index)


class Trends:
    """Latency and failures per target over the last BUCKETS x BUCKET seconds."""

    def __init__(self) -> None:
        self._series: OrderedDict[str, _Series] = OrderedDict()

    def take(self, events: Iterable[Event]) -> bool:
        """Add the anchors among `events`; True when any was added."""
        added = False
        for event in events:
            if isinstance(event, (AnchorSucceeded, AnchorFailed)):
                self._add(event.target, event.at, event.duration, isinstance(event, AnchorFailed))
                added = True
        return added

    def _add(self, target: str, at: float, duration: float, failed: bool) -> None:
        series = self._series.get(target)
        if series is None:
            series = self._series[target] = _Series()
            series.newest = int(at // BUCKET)
            if len(self._series) > MAX_TARGETS:
                self._series.popitem(last=False)
        self._series.move_to_end(target)
        index = int(at // BUCKET)
        series.roll(index)
        slot = BUCKETS - 1 - (series.newest - index)
        if slot < 0:
            return  # older than the window
        if failed:
            series.failures[slot] += 1
        else:
            series.latency[slot] = max(series.latency[slot], duration)
            series.last = duration

    def targets(self) -> list[str]:
        return list(self._series)

    def series(self, target: str, now: float) -> tuple[list[float], list[float], float | None]:
        """(slowest anchor per bucket, failures per bucket, the latest duration) up to `now`."""
        series = self._series.get(target)
        if series is None:
            return [0.0] * BUCKETS, [0.0] * BUCKETS, None
        series.roll(int(now // BUCKET))
        return list(series.latency), [float(n) for n in series.failures], series.last


class TrendStrip(Vertical):
    """Two lines: a target's latency and failures sparklines, with their numbers."""

    DEFAULT_CSS = """
    TrendStrip { height: 2; padding: 0 1; border-bottom: dashed $primary 40%; height: 3; }
    TrendStrip Horizontal { height: 1; }
    TrendStrip .trend-label { width: 28; }
    TrendStrip Sparkline { width: 30; height: 1; }
    TrendStrip .trend-value { width: auto; padding: 0 0 0 1; }
    """

    def __init__(self, trends: Trends, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.trends = trends
        self.target: str | None = None
        self._latency_label = Static("", classes="trend-label", markup=False)
        self._latency = Sparkline([0.0] * BUCKETS, summary_function=max)
        self._latency_value = Static("", classes="trend-value", markup=False)
        self._failures_label = Static("", classes="trend-label", markup=False)
        self._failures = Sparkline([0.0] * BUCKETS, summary_function=max)
        self._failures_value = Static("", classes="trend-value", markup=False)

    def compose(self) -> ComposeResult:
        yield Horizontal(self._latency_label, self._latency, self._latency_value)
        yield Horizontal(self._failures_label, self._failures, self._failures_value)

    def show(self, target: str | None, now: float) -> None:
        """`target`'s last BUCKETS x BUCKET seconds as of `now` (None: hidden)."""
        self.target = target
        self.display = target is not None
        if target is None:
            return
        latency, failures, last = self.trends.series(target, now)
        minutes = format_seconds(BUCKETS * BUCKET)
        self._set(self._latency_label, f"{target} latency {minutes}")
        self._set(self._latency_value, f"max {latency_text(max(latency))}, last {latency_text(last)}")
        self._set(self._failures_label, "failures")
        self._set(self._failures_value, f"{int(sum(failures))} in {minutes}")
        if list(self._latency.data or ()) != latency:
            self._latency.data = latency
        if list(self._failures.data or ()) != failures:
            self._failures.data = failures

    @staticmethod
    def _set(widget: Static, text: str) -> None:
        if str(widget.content) != text:
            widget.update(text)


def latency_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"
