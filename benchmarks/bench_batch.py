"""Batch calibration on dask.distributed: throughput with 1 and 2 workers, and memory.

Measured side by side in one run:

- throughput (exposures per second) of ``calibrate_many`` on 16 exposures
  with a LocalCluster of 1 worker and of 2 workers, one fit thread each —
  target: 2 workers ≥ 1.7× the throughput of 1; and of 1 worker with its
  default threads (all the CPUs: what ``--workers 1`` gives);
- peak memory (resident set size of the driver and every worker, sampled
  every 0.1 s) for 16 and for 64 exposures on 2 workers — target: 64 within
  20 % of 16 (memory bounded by the exposures in flight, not by the batch).

The prepared template grid is made once beforehand (as on a night's second
exposure); each cluster is started before its clock starts.

Run: ``python benchmarks/bench_batch.py [--fibers 100]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
from distributed import Client

import kspec_xr as kx
from kspec_xr._base.threads import ENV as THREADS_ENV
from kspec_xr._base.threads import available_cpus
from kspec_xr.batch import local_cluster
from kspec_xr.testing import make_exposure


class PeakMemory:
    """Samples the summed RSS of this process and its children until stopped."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _exposures(folder: Path, n: int, distinct: list[Path]) -> list[Path]:
    """``n`` input files (copies of the distinct simulated exposures, new names)."""
    out = []
    for i in range(n):
        source = distinct[i % len(distinct)]
        target = folder / f"exp{i:03d}red.fits"
        if not target.exists():
            shutil.copyfile(source, target)
        out.append(target)
    return out


def _import_modules():
    """Import every kspec_xr module (code, not data), as a long-lived worker has."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(kx.__path__):
        if module.name not in ("cli", "demo", "testing"):
            importlib.import_module(f"kspec_xr.{module.name}")


def _run(paths, out_dir, catalog, workers, threads=None):
    # the cluster calibrate_many starts itself when client=None, started here so
    # that its start-up is outside the clock; ``threads``: the fit's threads per
    # worker (KSPEC_XR_THREADS; default: the CPUs shared among the workers)
    saved = os.environ.get(THREADS_ENV)
    if threads is not None:
        os.environ[THREADS_ENV] = str(threads)
    try:
        return _timed(paths, out_dir, catalog, workers)
    finally:
        os.environ.pop(THREADS_ENV, None)
        if saved is not None:
            os.environ[THREADS_ENV] = saved


def _timed(paths, out_dir, catalog, workers):
    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.run(_import_modules)
        with PeakMemory() as memory:
            t0 = time.perf_counter()
            summary = kx.calibrate_many(
                paths, out_dir, catalog=catalog, client=client, progress=False, overwrite=True
            )
            seconds = time.perf_counter() - t0
    failed = int((summary["status"] != "ok").sum())
    return seconds, memory.peak, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fibers", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; kspec_xr {kx.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sims = [
            make_exposure(
                200 + i,
                n_fiber=args.fibers,
                n_standard=8,
                n_pixel=4096,
                directory=root / "sims",
                name=f"sim{i}",
                shuffle_catalog=False,
            )
            for i in range(4)
        ]
        # one catalogue covering every simulated field (positions differ per seed)
        catalog = root / "all_standards.csv"
        pd.concat([s.catalog for s in sims]).to_csv(catalog, index=False)
        distinct = [s.red_path for s in sims]
        # prepare the grid for this setup once (a night's later exposures reuse it)
        kx.flux_calibrate(sims[0].red, catalog=catalog).compute()

        inputs = root / "inputs"
        inputs.mkdir()
        paths16 = _exposures(inputs, 16, distinct)
        paths64 = _exposures(inputs, 64, distinct)

        print("running: 16 exposures on 1 worker, 1 thread …", flush=True)
        t1, mem1, f1 = _run(paths16, root / "out1", catalog, 1, threads=1)
        print("running: 16 exposures on 1 worker, its default threads …", flush=True)
        t1t, mem1t, f1t = _run(paths16, root / "out1t", catalog, 1)
        print("running: 16 exposures on 2 workers …", flush=True)
        t2, mem16, f2 = _run(paths16, root / "out2", catalog, 2)
        print("running: 64 exposures on 2 workers …", flush=True)
        t64, mem64, f64 = _run(paths64, root / "out64", catalog, 2)

    speedup = t1 / t2
    default_threads = available_cpus()
    growth = mem64 / mem16 - 1
    print()
    print(f"{'run':32s} {'seconds':>8s} {'exp/s':>7s} {'peak RSS':>10s} {'failed':>6s}")
    for name, t, n, mem, f in (
        ("16 exposures, 1 worker, 1 thread", t1, 16, mem1, f1),
        (f"16 exposures, 1 worker, {default_threads} threads", t1t, 16, mem1t, f1t),
        ("16 exposures, 2 workers", t2, 16, mem16, f2),
        ("64 exposures, 2 workers", t64, 64, mem64, f64),
    ):
        print(f"{name:32s} {t:8.1f} {n / t:7.2f} {mem / 2**20:8.0f} MB {f:6d}")
    print()
    print(
        f"throughput 2 workers / 1 worker (one thread each): {speedup:.2f}x (target >= 1.7x) "
        f"{'PASS' if speedup >= 1.7 else 'MISS'}"
    )
    print(
        f"throughput 1 worker with {default_threads} threads / with 1: {t1 / t1t:.2f}x "
        "(the fit's threads, when the workers do not use every CPU)"
    )
    print(
        f"peak memory 64 vs 16 exposures: {100 * growth:+.1f} % (target within 20 %) "
        f"{'PASS' if abs(growth) <= 0.2 else 'MISS'}"
    )


if __name__ == "__main__":
    main()
