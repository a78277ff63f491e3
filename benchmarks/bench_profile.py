"""Where the time of one in-process calibration goes, and its physical floor (issue 12).

The exposure of ``bench_speed.py`` (300 fibers × 4096 pixels, 10 standards,
the 572-template stand-in grid), warm: open → calibrate → write as the "in
one process" row runs it, the prepared grid in memory.  Every stage, and the
parts of the fit, are timed by wrapping them (each part's best of ``--repeat``
runs), first in one thread, so that the parts add up, then with the default
threads (``KSPEC_XR_THREADS``: the CPUs), as users run it.

The floor is what the bytes and the arithmetic cost by themselves, timed
inside the same single-thread runs:

- reading the input file and writing the output (``write_red`` writes,
  fsyncs and renames);
- the FFTs (``numpy.fft``: the cross-correlations of the velocity estimate and
  the FWHM check's blurs at 48 trial widths);
- the template products: every scored candidate's two dot products with the
  star (``Scorer.rows``), and the rebinning of the candidates onto the star's
  pixels (``rebin_apply``: two gathers from the running integrals and the
  interpolation between them).

Everything else is the work around them: running means, the Powell
refinement's Python, xarray's alignment and copies, header cards.

Run: ``python benchmarks/bench_profile.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

N_FIBER, N_STANDARD, N_PIXEL = 300, 10, 4096


class Clock:
    """Seconds spent in wrapped functions (outermost call only, per name), per run."""

    def __init__(self):
        self.run: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self.best: dict[str, float] = {}
        self.depth: collections.Counter = collections.Counter()

    def wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if self.depth[name]:
                return original(*args, **kwargs)
            self.depth[name] += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.run[name] += time.perf_counter() - start
                self.calls[name] += 1
                self.depth[name] -= 1

        setattr(owner, attribute, timed)

    @contextlib.contextmanager
    def timing(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.run[name] += time.perf_counter() - start
            self.calls[name] += 1

    def end_run(self) -> None:
        for name, seconds in self.run.items():
            self.best[name] = min(self.best.get(name, np.inf), seconds)
        self.last_calls = dict(self.calls)
        self.run.clear()
        self.calls.clear()


def instrument(clock: Clock) -> None:
    """Wrap the stages and the fit's parts (module attributes, as the pipeline looks them up)."""
    import kspec_xr.io as kio
    import kspec_xr.io.write as kwrite
    import kspec_xr.kernels.template_fit as tf
    import kspec_xr.pipeline as pipeline
    import kspec_xr.stages.fit as sfit
    import kspec_xr.stages.resolution as sres

    for name in (
        "select_standards", "associate_catalog", "fit_standards", "measure_resolution",
        "scale_to_photometry", "star_calibrations", "gate_standards", "combine_calibrations",
        "apply_calibration", "_sky_estimate",
    ):  # fmt: skip
        clock.wrap(pipeline, name, name)
    clock.wrap(kio, "open_red", "open_red")
    clock.wrap(kwrite, "_write_atomically", "write: bytes to disk (write, fsync, rename)")
    clock.wrap(kio, "write_red", "write_red")

    original_block, original_map = tf.fit_block, tf.map_threads
    inside_fit = []

    def fit_block(*args, **kwargs):
        label = "pass 1 (E(B-V) only)" if kwargs.get("first_pass") else "pass 2 (the fit)"
        inside_fit.append(True)
        try:
            with clock.timing(f"fit: {label}"):
                return original_block(*args, **kwargs)
        finally:
            inside_fit.pop()

    def map_threads(func, items, threads):
        if not inside_fit:
            return original_map(func, items, threads)
        with clock.timing("fit: stars scored (velocity, every candidate)"):
            return list(original_map(func, items, threads))

    sfit.fit_block = fit_block
    tf.map_threads = map_threads
    clock.wrap(tf, "_refine", "fit: Powell refinement between nodes")
    clock.wrap(tf, "finish_fit", "fit: refinement + velocity + model")
    clock.wrap(sres, "fwhm_block", "FWHM check: kernel")
    # the floor's primitives
    for module, attribute in ((np.fft, "rfft"), (np.fft, "irfft")):
        clock.wrap(module, attribute, "floor: FFTs")
    clock.wrap(tf.Scorer, "rows", "floor: template products (2 dot products per candidate)")
    clock.wrap(tf, "rebin_apply", "floor: rebinning gathers of the candidates")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import kspec_xr as kx
    import kspec_xr.io as kio
    from kspec_xr._base.threads import ENV, kernel_threads
    from kspec_xr.testing import make_exposure

    with tempfile.TemporaryDirectory(prefix="kspec_profile_") as tmp:
        tmp = Path(tmp)
        sim = make_exposure(
            1, n_fiber=N_FIBER, n_standard=N_STANDARD, n_pixel=N_PIXEL,
            directory=tmp / "exposure", name="bench",
        )  # fmt: skip
        grid_path = kx.standin_grid_path()
        out = tmp / "out.fits"

        def calibrate_once() -> None:
            ds = kio.open_red(sim.red_path)  # (looked up per call: instrumented below)
            calibrated = kx.flux_calibrate(ds, catalog=sim.catalog_path, templates=grid_path)
            kio.write_red(calibrated, out, overwrite=True)

        def best_total(threads: str) -> float:
            os.environ[ENV] = threads
            calibrate_once()  # warm: grid prepared, read and in memory
            best = np.inf
            for _ in range(args.repeat):
                start = time.perf_counter()
                calibrate_once()
                best = min(best, time.perf_counter() - start)
            return best

        default_threads = kernel_threads(N_STANDARD)
        threaded = best_total(str(default_threads))
        single = best_total("1")

        clock = Clock()
        instrument(clock)
        os.environ[ENV] = "1"
        for _ in range(args.repeat):
            with clock.timing("total"):
                calibrate_once()
            clock.end_run()
        best = clock.best

        # the bytes alone: reading the input, writing as many bytes (written, fsynced)
        size_in, size_out = sim.red_path.stat().st_size, out.stat().st_size
        read_best = write_best = np.inf
        payload = os.urandom(size_out)
        for _ in range(args.repeat):
            start = time.perf_counter()
            sim.red_path.read_bytes()
            read_best = min(read_best, time.perf_counter() - start)
            start = time.perf_counter()
            with open(tmp / "bytes.bin", "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            write_best = min(write_best, time.perf_counter() - start)

    ms = {k: 1000.0 * v for k, v in best.items()}
    fit_blocks = ms["fit: pass 1 (E(B-V) only)"] + ms["fit: pass 2 (the fit)"]
    fwhm = ms.get("FWHM check: kernel", 0.0)
    rows = [
        ("open_red (read and decode the RED file)", ms["open_red"]),
        ("select_standards + associate_catalog", ms["select_standards"] + ms["associate_catalog"]),
        ("fit_standards: pass 1, E(B-V) of each star", ms["fit: pass 1 (E(B-V) only)"]),
        ("fit_standards: pass 2, the fit at the field's E(B-V)", ms["fit: pass 2 (the fit)"]),
        ("    of both: scoring (velocity, every candidate)",
         ms["fit: stars scored (velocity, every candidate)"]),
        ("    of both: Powell refinement between nodes",
         ms["fit: Powell refinement between nodes"]),
        ("    of both: final velocity and model",
         ms["fit: refinement + velocity + model"] - ms["fit: Powell refinement between nodes"]),
        ("fit_standards: around the kernel (xarray, Teff box)", ms["fit_standards"] - fit_blocks),
        ("FWHM check (measure_resolution): kernel", fwhm),
        ("FWHM check: around the kernel", ms["measure_resolution"] - fwhm),
        ("FWHM check: the SKY spectrum's lines", ms.get("_sky_estimate", 0.0)),
        ("scale_to_photometry", ms["scale_to_photometry"]),
        ("star_calibrations", ms["star_calibrations"]),
        ("gate_standards", ms["gate_standards"]),
        ("combine_calibrations", ms["combine_calibrations"]),
        ("apply_calibration", ms["apply_calibration"]),
        ("write_red: encode (headers, images, tables)",
         ms["write_red"] - ms["write: bytes to disk (write, fsync, rename)"]),
        ("write_red: bytes to disk (write, fsync, rename)",
         ms["write: bytes to disk (write, fsync, rename)"]),
    ]  # fmt: skip
    named = sum(v for label, v in rows if not label.startswith("    "))
    print("one in-process calibration, 300 × 4096, 10 standards, 572 templates, warm")
    print(f"  best of {args.repeat}: {1000 * single:.0f} ms in 1 thread, "
          f"{1000 * threaded:.0f} ms in {default_threads} (the default)")  # fmt: skip
    print()
    print(f"  where it goes (1 thread; each part's best of {args.repeat})         ms")
    for label, value in rows:
        print(f"  {label:<58s} {value:6.0f}")
    print(f"  {'the rest (flux_calibrate glue, option checks)':<58s} "
          f"{ms['total'] - named:6.0f}")  # fmt: skip
    print(f"  {'total':<58s} {ms['total']:6.0f}")
    floor = [
        (f"read the input's {size_in / 1e6:.1f} MB", 1000 * read_best),
        (f"write {size_out / 1e6:.1f} MB and fsync", 1000 * write_best),
        ("FFTs (velocity cross-correlations, FWHM blurs)", ms["floor: FFTs"]),
        ("template products (2 dot products per candidate)",
         ms["floor: template products (2 dot products per candidate)"]),
        ("rebinning the candidates onto the star's pixels (2 gathers)",
         ms["floor: rebinning gathers of the candidates"]),
    ]  # fmt: skip
    print()
    print("  the physical floor (inside the same runs)                         ms")
    for label, value in floor:
        print(f"  {label:<58s} {value:6.0f}")
    total_floor = sum(v for _, v in floor)
    print(f"  {'floor':<58s} {total_floor:6.0f}  "
          f"({100 * total_floor / ms['total']:.0f} % of the 1-thread total)")  # fmt: skip


if __name__ == "__main__":
    main()
