"""Page size for the large NumPy temporaries of the data steps (generation, feature building).

NumPy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``) for every array of
4 MB or more. With the kernel's THP ``defrag`` setting at ``madvise`` (the default of most Linux
distributions, and of the VMs this package is benchmarked on), each first touch of such an array
then finds, compacts and zeroes a 2 MB page synchronously. The data steps allocate many
log-sized temporaries, and on those VMs that path cost more than it saves::

    python experiments/bench_scale.py --stages gen features --repeats 3   # best of 3, Xeon VM
    # generate_customer_base(1M):       15.3 s → 12.4 s (system time 5.6 → 3.4 s)
    # build_customer_view(19.9M events): 7.9 s → 7.1 s

(``experiments/results/performance.md``, session 15.) :func:`small_pages` turns NumPy's request
off for the duration of a block and restores it afterwards; the arrays are the same, only the
pages behind them differ. ``NUMPY_MADVISE_HUGEPAGE`` in the environment is the user's choice and
is left alone (``NUMPY_MADVISE_HUGEPAGE=1`` keeps huge pages, e.g. on a machine with THP
``defrag=defer``, where they are cheap).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np


def _madvise_switch() -> Callable[[bool], bool] | None:
    """NumPy's private switch ``_set_madvise_hugepage(enabled) -> previous``, where this NumPy has one."""
    for module in ("_core", "core"):
        multiarray = getattr(getattr(np, module, None), "multiarray", None)
        switch = getattr(multiarray, "_set_madvise_hugepage", None)
        if callable(switch):
            return switch
    return None


_switch = _madvise_switch()
_lock = threading.Lock()
_depth = 0
_previous = True


@contextmanager
def small_pages() -> Iterator[None]:
    """NumPy arrays allocated inside the block get normal pages (no ``MADV_HUGEPAGE``).

    Nested and concurrent blocks (the generator's worker thread) share one switch: the first block
    in turns huge pages off, the last one out restores NumPy's previous setting. Also usable as a
    decorator (``@small_pages()``).
    """
    global _depth, _previous
    if _switch is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        yield
        return
    with _lock:
        if _depth == 0:
            _previous = _switch(False)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _switch(_previous)
