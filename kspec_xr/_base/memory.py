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
Python session that imports kspec_xr keeps its own setting.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["HUGEPAGE_ENV", "without_huge_pages"]

HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"


def without_huge_pages(env: MutableMapping[str, str]) -> None:
    """Set ``NUMPY_MADVISE_HUGEPAGE=0`` in ``env`` unless the caller's environment sets it."""
    if HUGEPAGE_ENV not in os.environ:
        env[HUGEPAGE_ENV] = "0"
