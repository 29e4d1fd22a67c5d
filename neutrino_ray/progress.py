"""Progress lines a person can follow: done/total, rate, elapsed time and ETA.

One progress line says what is done of what total, the rate, the elapsed time and an ETA::

    predict: 412,000/1,000,000 events (41.2 %), 25,310 events/s, elapsed 0:16, ETA 0:23

On a terminal the line updates in place (at most once a second); in a log that is not a terminal (a
RayJob's driver log, a CI log, a redirected file) it is written as its own line at most every
``NEUTRINO_RAY_PROGRESS_SECONDS`` (default 30 s) and always at the end, so an operator sees one at least
once a minute. Progress goes through the ``neutrino_ray`` logger at INFO, so ``-q`` silences it with the
rest of our INFO lines.
The ``neutrino_ray.progress`` logger carries them, so a caller can quiet our other INFO lines (the demo
does) and keep its progress; :mod:`neutrino_ray.logs` sets its level with the others (``-q`` hides it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from neutrino_ray import logs

log = logging.getLogger("neutrino_ray.progress")
INTERVAL_ENV = "NEUTRINO_RAY_PROGRESS_SECONDS"  # seconds between progress lines in a non-terminal log


def clock(seconds: float) -> str:
    """Seconds as m:ss or h:mm:ss."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """done/total with rate, elapsed and ETA, written at most every ``interval`` seconds and at the end.

    ``total`` may be None (unknown): the line then has no percentage or ETA. Use as a context manager
    or call :meth:`close`; ``update`` is cheap (a clock read) between lines."""

    def __init__(self, what: str, total: int | None, unit: str = "events", interval: float | None = None,
                 stream: IO[str] | None = None, tty: bool | None = None, tick: bool = False) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.started = self._last = time.monotonic()
        self.stream = stream if stream is not None else logs.terminal()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        if interval is None:
            interval = 1.0 if self.tty else float(os.environ.get(INTERVAL_ENV, "30"))
        self.interval = interval
        self._open_line = False
        self.closed = False
        self.extra = ""  # appended to the line (e.g. training's loss)
        self._ticker: threading.Thread | None = None
        if tick:  # a line every interval even while nothing finishes (a blocking iterator is being waited on)
            self._ticker = threading.Thread(target=self._tick, name=f"progress-{what}", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while True:
            time.sleep(min(self.interval, 1.0))
            if self.closed:
                return
            if time.monotonic() - self._last >= self.interval:
                self.update(0)

    def line(self, now: float | None = None) -> str:
        """The progress line as it stands."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            pct = 100.0 * self.done / self.total
            left = max(self.total - self.done, 0)
            eta = clock(left / rate) if rate > 0 else "?"
            head = f"{self.done:,}/{self.total:,} {self.unit} ({pct:.1f} %)"
            tail = f", elapsed {clock(elapsed)}, ETA {eta}"
        else:
            head = f"{self.done:,} {self.unit}"
            tail = f", elapsed {clock(elapsed)}"
        return f"{self.what}: {head}{self.extra}, {rate:,.0f} {self.unit}/s{tail}"

    def _emit(self, final: bool = False) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        text = self.line()
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
            self.stream.flush()
            self._open_line = not final
        else:
            log.info("%s", text)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more done; write a line if ``interval`` has passed since the last."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def set(self, done: int) -> None:
        """Set the count done (for callers that know the running total)."""
        self.update(done - self.done)

    def close(self) -> None:
        """The final line (always written, at INFO)."""
        if not self.closed:
            self.closed = True
            self._emit(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
            return
        self.closed = True  # a failed run: no final line; the ticker stops
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()


T = TypeVar("T")


def track(items: Iterable[T], what: str, total: int | None, count: Any = None, unit: str = "events") -> Iterator[T]:
    """Yield ``items``, counting each (``count(item)`` of them, else 1) on a :class:`Progress`."""
    with Progress(what, total, unit, tick=True) as p:
        for item in items:
            yield item
            p.update(1 if count is None else int(count(item)))


def ray_get(refs: list[Any], what: str, counts: list[int] | None = None, unit: str = "events",
            total: int | None = None, progress: Progress | None = None) -> list[Any]:
    """``ray.get(refs)`` with a progress line: each finished ref counts ``counts[i]`` (else 1).

    Waits with a timeout, so the line is written every ``interval`` even while no ref finishes (a stuck
    job and a slow one look different in the log). Results come back in the order of ``refs``. Pass
    ``progress`` to count into a line that spans several calls (it is then not closed here)."""
    import ray

    weights = counts if counts is not None else [1] * len(refs)
    index = {ref: i for i, ref in enumerate(refs)}
    p = progress if progress is not None else Progress(what, sum(weights) if total is None else total, unit)

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=min(p.interval, 5.0),
                                 fetch_local=False)
        p.update(sum(weights[index[r]] for r in done))
    out = ray.get(list(refs))
    if progress is None:
        p.close()
    return out
