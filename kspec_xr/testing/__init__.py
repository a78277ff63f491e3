"""Factories and checks for tests, examples, benchmarks and the demo.

- :func:`make_exposure`: a simulated exposure (RED file + catalogue) with its truth;
- :func:`accuracy_report`: a calibrated simulation against that truth;
- :func:`raise_if_dask_computes`: the scheduler that proves a stage stays lazy.
"""

from .accuracy import accuracy_report
from .dask import raise_if_dask_computes
from .exposure import SimulatedExposure, make_exposure, telluric_transmission, throughput_curve

__all__ = [
    "make_exposure",
    "SimulatedExposure",
    "throughput_curve",
    "telluric_transmission",
    "accuracy_report",
    "raise_if_dask_computes",
]
