"""How kspec_xr's own processes ask for memory: without numpy's transparent huge pages.

numpy asks the kernel for transparent huge pages (``madvise``) for every
array of 4 MiB or more.  On a virtual machine whose memory the host backs
only when the guest first touches it, each new 2 MiB page then costs a
host allocation: on the 2-core development VM, filling 100 MB of fresh
arrays took 1.25 s with huge pages and 39 ms without, and ``kspec-xr demo``
on an empty cache (which reads and convolves the whole template grid) 18.5 s
against 12 s.  A calibration streams through its arrays, so the huge pages'
fewer TLB misses gain it nothing measurable.

The command line (before it imports numpy) and the batch's worker processes
therefore start numpy with ``NUMPY_MADVISE_HUGEPAGE=0``, unless that variable
is set already (``NUMPY_MADVISE_HUGEPAGE=1`` keeps numpy's default).  A
Python session that imports kspec_xr keeps its own setting, except while a
template grid is prepared (:func:`small_pages`), which makes several hundred
MB of fresh arrays: a cold calibration in a new process took 11-13 s with
huge pages and 5.6 s without.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping

__all__ = ["HUGEPAGE_ENV", "without_huge_pages", "small_pages"]

HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"


def without_huge_pages(env: MutableMapping[str, str]) -> None:
    """Set ``NUMPY_MADVISE_HUGEPAGE=0`` in ``env`` unless the caller's environment sets it."""
    if HUGEPAGE_ENV not in os.environ:
        env[HUGEPAGE_ENV] = "0"


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """numpy's arrays made without huge pages inside the block (the setting restored after).

    Unless ``NUMPY_MADVISE_HUGEPAGE`` is set (the user's choice stands); a numpy
    without the switch (it is numpy's private ``_set_madvise_hugepage``) is left as is.
    """
    from numpy._core import multiarray

    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    if switch is None or HUGEPAGE_ENV in os.environ:
        yield
        return
    previous = switch(False)
    try:
        yield
    finally:
        switch(previous)
