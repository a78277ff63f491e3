"""A dask scheduler that proves a stage stays lazy (the pattern of ``xarray/tests``)."""

from __future__ import annotations

import contextlib

import dask

__all__ = ["raise_if_dask_computes"]


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0):
    """Context manager: more than ``max_computes`` dask computes inside it raise.

    The pattern of ``xarray/tests/__init__.py``: a scheduler that counts its
    calls (and runs the graph synchronously while allowed).

    >>> with raise_if_dask_computes():      # doctest: +SKIP
    ...     lazy = ds.pipe(stage)
    """
    calls = 0

    def scheduler(dsk, keys, **kwargs):
        nonlocal calls
        calls += 1
        if calls > max_computes:
            raise RuntimeError(
                f"dask computed {calls} times where at most {max_computes} was allowed"
            )
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=scheduler):
        yield
