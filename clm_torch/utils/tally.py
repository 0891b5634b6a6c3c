"""Warnings about data read in parts (the chunks of a frame being scored, the splits of one fit), said
once each with totals at the end, instead of once per part with the part's own counts.

A :class:`WarningTally` is open for one call (``FeatureEncoder.one_warning_each``); each part adds its
counts to a problem's key, and :meth:`WarningTally.flush` says every problem once::

    tally.add(("unseen", "region"), "scores.csv", say, n_unseen=12, n_obs=40, examples=["Atlantis"])
    ...
    tally.flush()  # say("scores.csv", n_unseen=<sum>, n_obs=<sum>, examples=[first few distinct])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from typing import Any

MAX_EXAMPLES = 3  # distinct example values a warning names
_SPLIT = re.compile(r"^(.*) \[(\w+) split\]$")


def joint_source(sources: Sequence[str]) -> str:
    """One name for the sources a problem was seen in: ``'t.csv [train split]'`` and ``'t.csv [val
    split]'`` are ``'t.csv [train/val splits]'``; other lists are joined with ``'; '``."""
    if len(sources) == 1:
        return sources[0]
    parts = [_SPLIT.match(s) for s in sources]
    if all(parts) and len({m.group(1) for m in parts}) == 1:  # type: ignore[union-attr]
        return f"{parts[0].group(1)} [{'/'.join(m.group(2) for m in parts)} splits]"  # type: ignore[union-attr]
    return "; ".join(sources)


class _Problem:
    def __init__(self, say: Callable[..., None], owner: Hashable) -> None:
        self.say, self.owner = say, owner
        self.sources: list[str] = []
        self.sums: dict[str, float] = {}
        self.lowest: float | None = None
        self.examples: list[Any] | None = None


class WarningTally:
    """Problems seen while reading data in parts, each said once by :meth:`flush` with its totals.

    ``seen``: keys of checks done once per block (a whole frame's, by its first reader)."""

    def __init__(self) -> None:
        self.seen: set[Hashable] = set()
        self._problems: dict[Hashable, _Problem] = {}

    def add(self, key: Hashable, source: str, say: Callable[..., None], *, owner: Hashable = None,
            lowest: float | None = None, examples: Sequence[Any] | None = None, **sums: float) -> None:
        """Count one part's share of problem ``key``: ``sums`` are added up, ``lowest`` is the minimum and
        ``examples`` keep the first :data:`MAX_EXAMPLES` distinct values. ``say(source, **sums,
        lowest=..., examples=...)`` (keywords it was given) words the warning, or stays silent when the
        totals are below its threshold; a later ``add`` with another ``say`` replaces it (a caller that
        knows more). Two readers of the same rows (a churn model's encoder and its VAE's) would count
        them twice: the first ``owner`` to add a key keeps it and the others' parts are ignored."""
        p = self._problems.get(key)
        if p is None:
            p = self._problems[key] = _Problem(say, owner)
        elif p.owner != owner:
            return
        p.say = say
        if source not in p.sources:
            p.sources.append(source)
        for k, v in sums.items():
            p.sums[k] = p.sums.get(k, 0) + v
        if lowest is not None:
            p.lowest = lowest if p.lowest is None else min(p.lowest, lowest)
        if examples is not None:
            p.examples = p.examples if p.examples is not None else []
            for v in examples:
                if len(p.examples) >= MAX_EXAMPLES:
                    break
                if v not in p.examples:
                    p.examples.append(v)

    def flush(self) -> None:
        """Say every problem counted so far, once, with its totals; then forget them."""
        problems, self._problems = self._problems, {}
        for p in problems.values():
            extra = {k: v for k, v in (("lowest", p.lowest), ("examples", p.examples)) if v is not None}
            p.say(joint_source(p.sources), **p.sums, **extra)


__all__ = ["MAX_EXAMPLES", "WarningTally", "joint_source"]
