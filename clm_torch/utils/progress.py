"""Progress bars for long data steps (generation, feature building, scoring).

Training has Lightning's ``RichProgressBar``; this is for everything outside the trainer::

    from clm_torch.utils.progress import chunks, track

    for start, stop in chunks(len(df), 65536, "scoring"):
        out[start:stop] = score(df.iloc[start:stop])

    for month in track(months, "building features"):
        ...

A bar is shown only when stderr is a terminal; ``CLM_PROGRESS=0`` turns bars off everywhere and
``CLM_PROGRESS=1`` forces them on (e.g. in a notebook). Without a bar the iterable is passed
through untouched, so wrapping a loop costs nothing in tests and batch jobs. When another rich
live display is already running (the training progress bar), the bar is skipped silently.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_OFF = {"0", "false", "no", "off"}
_ON = {"1", "true", "yes", "on"}


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether to draw a bar: ``CLM_PROGRESS=0`` wins, then ``enabled``, then ``CLM_PROGRESS=1``,
    then whether stderr is a terminal."""
    env = os.environ.get("CLM_PROGRESS", "").strip().lower()
    if env in _OFF:
        return False
    if enabled is not None:
        return bool(enabled)
    if env in _ON:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def track(iterable: Iterable[T], description: str = "working", total: int | None = None, *,
          enabled: bool | None = None) -> Iterator[T]:
    """Yield from ``iterable`` with a transient rich progress bar (see the module docstring).

    Args:
        iterable: what to loop over.
        description: the label in front of the bar.
        total: number of items (taken from ``len(iterable)`` when it has one; else the bar
            shows a count without an end).
        enabled: force the bar on/off (``CLM_PROGRESS=0`` still turns it off).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not progress_enabled(enabled):
        t0 = time.perf_counter()
        yield from iterable
        log.debug("%s: done in %.2f s", description, time.perf_counter() - t0)
        return
    from rich.errors import LiveError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
    try:
        bar.start()
    except LiveError:  # another live display (e.g. the training bar) owns the terminal
        yield from iterable
        return
    try:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task)
    finally:
        bar.stop()


def chunks(n: int, size: int, description: str = "working", *, enabled: bool | None = None
           ) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(n)`` in steps of ``size``, with a progress bar."""
    size = max(int(size), 1)
    starts = range(0, int(n), size)
    for start in track(starts, description, total=len(starts), enabled=enabled):
        yield start, min(start + size, int(n))


class steps:
    """A bar over the named steps of a vectorised job (nothing to iterate row by row)::

        with steps("generating 1,000,000 customers", 5) as step:
            step("population")
            ...
            step("event log")
            ...

    Each ``step(name)`` completes the previous step and shows ``name``. Without a bar (see
    :func:`progress_enabled`) every step is logged at DEBUG with its duration instead.
    """

    def __init__(self, description: str, total: int, *, enabled: bool | None = None) -> None:
        self.description, self.total, self.enabled = description, int(total), progress_enabled(enabled)
        self._bar = self._task = None
        self._name, self._t = "", 0.0

    def __enter__(self) -> "steps":
        self._t = time.perf_counter()
        if self.enabled:
            from rich.errors import LiveError
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                           MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
            try:
                bar.start()
            except LiveError:  # another live display owns the terminal
                return self
            self._bar, self._task = bar, bar.add_task(self.description, total=self.total)
        return self

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self._name:
            log.debug("%s: %s done in %.2f s", self.description, self._name, now - self._t)
            if self._bar is not None:
                self._bar.advance(self._task)
        self._name, self._t = name, now
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.description}: {name}")

    def __exit__(self, *exc: object) -> None:
        self("")
        if self._bar is not None:
            self._bar.stop()
