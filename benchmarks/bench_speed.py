"""Speed of the flux calibration against the per-template loop and DESI's match_templates.

Measured in one run, on one simulated exposure (300 fibers × 4096 pixels, 10
standards) against the bundled stand-in grid (572 BOSZ-format templates):

- cold: ``kx.flux_calibrate`` in a fresh process with an empty prepared-grid
  cache (the template grid is read from its raw BOSZ-format files, convolved,
  rebinned and cached as part of the call; those raw files are the
  "download" and already exist in the stand-in cache);
- warm, new process: the same call in a fresh process, the prepared grid
  loaded from the cache file (best of N);
- warm, same process: the same call again in one process, the prepared grid
  in memory — the steady state of a batch worker (best of N);
- the per-template loop of ``tests/reference_fit.py`` on the same stars
  and candidates, with each template's convolution operator built per
  template (the reference pipeline) and with one shared operator (the fastest
  a per-template loop can be); native templates in memory, not timed;
- ``desispec.fluxcalibration.match_templates`` (if desispec can be imported,
  here or by ``--desi-python``) on the same stars and templates: all 572, and
  each star's colour-box candidates; a Gaussian LSF of the exposure's FWHM in
  desispec's resolution format;
- ratios against the targets (DESIGN.md §5): warm ≥ 30× faster than
  match_templates alone, ≥ 100× faster than the per-template loop, cold ≤ 10 s,
  warm < 1 s; and how the warm time grows with fibers (100 → 1000) and
  templates (~100 → ~2000).

Then, as users run it (issue 12), side by side with the same desispec time:
``kspec-xr fluxcal`` in a new process with the prepared grid cached, open →
calibrate → write in one process (warm), ``kspec-xr batch --workers 1|2`` on
12 exposures (cluster start included; peak memory of the process tree for 16
and 64 exposures) and the first run (``kspec-xr demo`` with an empty cache:
the stand-in grid generated and prepared), with the ratios and targets.

Run: ``python benchmarks/bench_speed.py [--quick] [--as-run-only] [--desi-python PATH]``.
desispec: ``pip install desispec==0.70.0`` (pulls numba, healpy, fitsio,
desiutil, desimodel, desitarget; it leaves numpy/scipy/astropy alone — check
with ``pip install --dry-run``), or keep it apart:
``python -m venv --system-site-packages V && V/bin/pip install desispec==0.70.0``
and pass ``--desi-python V/bin/python`` (or set ``KSPEC_XR_DESI_PYTHON``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
C_KMS = 299_792.458
N_FIBER, N_STANDARD, N_PIXEL = 300, 10, 4096
TARGETS = {"desi": 30.0, "reference": 100.0, "cold": 10.0, "warm": 1.0}
#: issue 12: desispec match_templates time ÷ kspec_xr time, as users run it
USER_TARGETS = {"in_process": 60.0, "batch": 30.0, "cli": 12.0, "first_run": 20.0}
N_BATCH = 12


# ---------------------------------------------------------------------------
# child processes: one fresh interpreter per measurement that must start cold
# ---------------------------------------------------------------------------


def child_calibrate(args) -> dict:
    """``flux_calibrate`` in this (fresh) process; the times of its parts."""
    t0 = time.perf_counter()
    import kspec_xr as kx

    kx.flux_calibrate  # noqa: B018  (resolve the lazy import outside the timing)
    t1 = time.perf_counter()
    ds = kx.open_red(args.red).load()
    grid = kx.open_bosz(args.grid)
    t2 = time.perf_counter()
    out = kx.flux_calibrate(ds, catalog=args.catalog, templates=grid, cache=args.cache).compute()
    t3 = time.perf_counter()
    return {
        "import": t1 - t0,
        "open": t2 - t1,
        "calibrate": t3 - t2,
        "fit_template": out["fit_template"].values.tolist(),
    }


def child_desispec(args) -> dict:
    """``match_templates`` on every star, all templates and the colour-box candidates."""
    os.environ.setdefault("DESI_LOGLEVEL", "WARNING")
    import desispec
    import desispec.fluxcalibration as fc
    from desispec.resolution import Resolution

    data = np.load(args.inputs)
    wave, params = data["wave"], data["params"]
    n_star = min(int(args.stars), data["flux"].shape[0])
    Resolution(data["rdata"])  # the resolution data must be valid in desispec's format

    def run(s, select):
        start = time.perf_counter()
        coef, z, chi2 = fc.match_templates(
            {"k": wave},
            {"k": data["flux"][s].copy()},  # match_templates edits ivar in place
            {"k": data["ivar"][s].copy()},
            {"k": data["rdata"]},
            data["stdwave"],
            data["stdflux"][select],
            params[select, 0],
            params[select, 1],
            params[select, 2],
            ncpu=1,
        )
        seconds = time.perf_counter() - start
        weights = coef / coef.sum() if coef.sum() > 0 else coef
        return {
            "seconds": seconds,
            "rv": float(z * C_KMS),
            "params": (weights @ params[select]).tolist(),
            "best": int(np.flatnonzero(select)[np.argmax(coef)]),
            "chi2": float(chi2),
        }

    everything = np.ones(params.shape[0], dtype=bool)
    run(0, data["cand"][0])  # warm-up (first-call imports and file reads), not timed
    results = {"version": desispec.__version__, "all": [], "box": []}
    for s in range(n_star):
        results["all"].append(run(s, everything))
        results["box"].append(run(s, data["cand"][s]))
    return results


def run_child(python: str, mode: str, *options: str) -> tuple[dict, float]:
    """Run this script in a new interpreter; its JSON answer and the process's wall time."""
    start = time.perf_counter()
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--child", mode, *options],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def say(*text) -> None:
    print(*text, flush=True)


def progress(text: str) -> None:
    print(f"  ... {text}", file=sys.stderr, flush=True)


def best_of(n: int, func) -> tuple[float, object]:
    """Smallest wall time of ``n`` calls, and the last result."""
    times, result = [], None
    for _ in range(n):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return min(times), result


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def versions() -> str:
    import astropy
    import dask
    import scipy
    import xarray

    import kspec_xr

    return (
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"xarray {xarray.__version__}, dask {dask.__version__}, astropy {astropy.__version__}, "
        f"kspec_xr {kspec_xr.__version__}"
    )


def find_desi_python(option: str | None) -> str | None:
    """An interpreter that can import desispec: --desi-python, $KSPEC_XR_DESI_PYTHON or this one."""
    for candidate in (option, os.environ.get("KSPEC_XR_DESI_PYTHON")):
        if candidate:
            return candidate
    if importlib.util.find_spec("desispec") is not None:
        return sys.executable
    return None


def gaussian_resolution_data(wave: np.ndarray, fwhm, resolution: float, ndiag: int = 21):
    """desispec resolution data (ndiag × nwave): a Gaussian LSF integrated over pixels.

    Row ``k`` is the diagonal at offset ``ndiag//2 − k`` (scipy ``dia_matrix``
    order, as desispec stores it); σ per pixel = sqrt(FWHM² − (λ/R)²)/2.3548
    in pixels, the same kernel kspec_xr applies to the R = ``resolution``
    templates.
    """
    from scipy.special import ndtr

    from kspec_xr.kernels.resample import SIGMA_PER_FWHM
    from kspec_xr.templates import fwhm_at

    sigma_pix = (
        np.sqrt(fwhm_at(fwhm, wave) ** 2 - (wave / resolution) ** 2)
        / SIGMA_PER_FWHM
        / np.gradient(wave)
    )
    offsets = np.arange(ndiag // 2, -(ndiag // 2) - 1, -1)[:, None]
    return ndtr((offsets + 0.5) / sigma_pix) - ndtr((offsets - 0.5) / sigma_pix)


def stage_times(ds, catalog, grid, cache, repeat: int) -> list[tuple[str, float]]:
    """Best-of-``repeat`` time of each stage of the chain ``flux_calibrate`` runs."""
    import kspec_xr as kx

    chain = [
        ("select_standards", kx.select_standards),
        ("associate_catalog", lambda d: kx.associate_catalog(d, catalog)),
        ("fit_standards", lambda d: kx.fit_standards(d, grid, cache=cache)),
        ("scale_to_photometry", kx.scale_to_photometry),
        ("star_calibrations", kx.star_calibrations),
        ("gate_standards", kx.gate_standards),
        ("combine_calibrations", kx.combine_calibrations),
        ("apply_calibration", kx.apply_calibration),
    ]
    best = {name: np.inf for name, _ in chain}
    for _ in range(repeat):
        current = ds
        for name, stage in chain:
            start = time.perf_counter()
            current = stage(current)
            best[name] = min(best[name], time.perf_counter() - start)
    return list(best.items())


def big_grid(tmp: Path):
    """A ~2000-template stand-in grid (25 Teff × 6 log g × 14 [M/H]), written into ``tmp``."""
    import kspec_xr as kx
    from kspec_xr.templates.standin import DEFAULT_GRID, write_standin_grid

    progress("scaling: writing a 2100-template stand-in grid")
    start = time.perf_counter()
    path = write_standin_grid(
        tmp / "grid2100",
        teff=tuple(range(5000, 8001, 125)),
        logg=(2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
        mh=tuple(np.round(np.arange(-2.5, 0.76, 0.25), 2).tolist()),
        alpha=(0.0,),
        wave_range=DEFAULT_GRID["wave_range"],
    )
    progress(f"written in {time.perf_counter() - start:.0f} s")
    return kx.open_bosz(path)


def subset_grid(grid, tag: str, **selection):
    """A sub-grid with its own ``grid_id`` (so its prepared form is cached apart)."""
    sub = grid.sel(**selection)
    sub.attrs = {**grid.attrs, "grid_id": f"{grid.attrs['grid_id']}-{tag}"}
    return sub


# ---------------------------------------------------------------------------
# as users run it: the command line, one process, the night batch, the first run
# ---------------------------------------------------------------------------


def kspec_cli() -> list[str]:
    """The ``kspec-xr`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("kspec-xr")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kspec_xr.cli"]


def run_measured(command: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Run ``command``; its wall time, the peak RSS (bytes) of its whole process tree, stdout."""
    import threading

    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    peak = 0
    done = threading.Event()

    def watch():
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
            except psutil.NoSuchProcess:
                return
            peak = max(peak, total)
            done.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command[:3])} … failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, peak, out


def user_runs(tmp: Path, sim, grid_path: Path, repeat: int, quick: bool) -> dict:
    """The four ways users run kspec_xr, timed on the benchmark's exposure."""
    import shutil

    import kspec_xr as kx
    from kspec_xr.testing import make_exposure

    cache = tmp / "user-cache"  # prepared grids of these runs (the stand-in files are shared)
    env = {"KSPEC_XR_CACHE": str(cache)}
    common = ["--catalog", str(sim.catalog_path), "--templates", str(grid_path)]
    out = tmp / "user-out.fits"

    # in one process: open -> calibrate -> write, warm (the prepared grid in memory)
    def in_process():
        ds = kx.open_red(sim.red_path)
        calibrated = kx.flux_calibrate(ds, catalog=sim.catalog_path, templates=grid_path)
        kx.write_red(calibrated, out, overwrite=True)

    progress("as run: in one process (open, calibrate, write)")
    in_process()
    in_process()
    warm, _ = best_of(max(repeat, 5), in_process)

    # kspec-xr fluxcal in a new process, the prepared grid cached on disk
    progress("as run: kspec-xr fluxcal, new process")
    fluxcal = [*kspec_cli(), "fluxcal", str(sim.red_path), "-o", str(out), "--overwrite", *common]
    run_measured(fluxcal, env)  # prepares and caches the grid
    cli = min(run_measured(fluxcal, env)[0] for _ in range(repeat))

    # kspec-xr batch: exposures of their own (different seeds), cluster start included
    progress(f"as run: {N_BATCH} exposures for the batch")
    night = tmp / "night"
    night.mkdir()
    seeds = []
    for k in range(N_BATCH):
        other = make_exposure(
            100 + k, n_fiber=N_FIBER, n_standard=N_STANDARD, n_pixel=N_PIXEL,
            directory=tmp / f"night-src{k}", name=f"n{k:02d}",
        )  # fmt: skip
        shutil.copy(other.red_path, night / other.red_path.name)
        seeds.append(other)
    catalog = tmp / "night-catalog.csv"  # one catalogue for the night
    with open(catalog, "w") as merged:
        for k, other in enumerate(seeds):
            lines = other.catalog_path.read_text().splitlines(keepends=True)
            merged.writelines(lines if k == 0 else lines[1:])

    def batch(files: list[Path], workers: int) -> tuple[float, int]:
        out_dir = tmp / f"batch-{workers}-{len(files)}-{uuid_hex()}"
        command = [
            *kspec_cli(), "batch", *map(str, files), "--out-dir", str(out_dir),
            "--workers", str(workers), "--catalog", str(catalog), "--templates", str(grid_path),
        ]  # fmt: skip
        wall, peak, _ = run_measured(command, env)
        summary = (out_dir / "kspec_xr_batch_summary.csv").read_text().splitlines()[1:]
        failed = [line for line in summary if ",failed," in line]
        if failed:
            raise RuntimeError(f"batch: {len(failed)} exposures failed: {failed[0][:300]}")
        return wall, peak

    files = sorted(night.glob("*.fits"))
    progress("as run: kspec-xr batch --workers 1")
    batch(files[:2], 1)  # warm the prepared-grid cache for this setup
    batch1 = min(batch(files, 1)[0] for _ in range(1 if quick else 2))
    progress("as run: kspec-xr batch --workers 2")
    batch2 = batch(files, 2)[0]
    memory = {}
    for count in (16, 64) if not quick else (16,):
        many = tmp / f"night{count}"
        many.mkdir()
        for k in range(count):
            os.link(files[k % len(files)], many / f"x{k:03d}_{files[k % len(files)].name}")
        progress(f"as run: kspec-xr batch --workers 2, {count} exposures (memory)")
        wall, peak = batch(sorted(many.glob("*.fits")), 2)
        memory[count] = (wall, peak)

    # first run on a fresh machine: kspec-xr demo with an empty cache
    progress("as run: kspec-xr demo, empty cache (generates the stand-in grid)")
    fresh = tmp / "fresh-home"
    demo_env = {"XDG_CACHE_HOME": str(fresh / ".cache"), "KSPEC_XR_CACHE": "", "HOME": str(fresh)}
    demo_wall, _, demo_out = run_measured(
        [*kspec_cli(), "demo", "--dir", str(tmp / "demo")], demo_env
    )
    own = [line for line in demo_out.splitlines() if line.startswith("total ")]
    demo_own = float(own[-1].split()[1]) if own else float("nan")
    return {
        "in_process": warm,
        "cli": cli,
        "batch1": batch1 / N_BATCH,
        "batch2": batch2 / N_BATCH,
        "memory": memory,
        "demo_wall": demo_wall,
        "demo_own": demo_own,
    }


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


def report_user_runs(runs: dict, desi_total: float | None) -> None:
    """The four rows of issue 12, side by side with desispec, and the targets."""
    say()
    say("as users run it (300 × 4096, 10 standards, 572 templates; desispec = match_templates")
    say("alone on the same 10 stars with all templates, measured above in this run)")
    say(f"  {'how it is run':58s} {'kspec_xr':>9s} {'desispec ÷':>11s} {'target':>8s}")
    rows = [
        ("kspec-xr fluxcal, new process, prepared grid cached", runs["cli"], "cli"),
        ("in one process: open → calibrate → write, warm", runs["in_process"], "in_process"),
        (f"kspec-xr batch --workers 1, {N_BATCH} exposures, per exposure", runs["batch1"], "batch"),
        (f"kspec-xr batch --workers 2, {N_BATCH} exposures, per exposure", runs["batch2"], None),
    ]
    for label, seconds, key in rows:
        ratio = desi_total / seconds if desi_total else float("nan")
        target = USER_TARGETS.get(key) if key else None
        mark = f"≥{target:g}×  {verdict(ratio >= target)}" if target else ""
        say(f"  {label:58s} {seconds:8.3f}s {ratio:10.1f}× {mark:>8s}")
    ok = runs["demo_own"] <= USER_TARGETS["first_run"]
    say(
        f"  {'first run: kspec-xr demo, empty cache (demo total)':58s} {runs['demo_own']:8.1f}s "
        f"{'':11s} ≤20 s  {verdict(ok)}   (process wall {runs['demo_wall']:.1f} s)"
    )
    say(
        f"  batch, 2 workers: {1 / runs['batch2']:.2f} exposures/s; 1 worker: "
        f"{1 / runs['batch1']:.2f} exposures/s"
    )
    for count, (wall, peak) in runs["memory"].items():
        say(
            f"  batch --workers 2, {count} exposures: {wall:.0f} s, peak memory of the process "
            f"tree {peak / 2**30:.2f} GiB"
        )


# ---------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer stars and repeats")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=None, help="best of N (default 3)")
    parser.add_argument(
        "--ref-stars",
        type=int,
        default=None,
        help="stars timed with the per-template-kernel reference (scaled to 10; default 2)",
    )
    parser.add_argument("--desi-python", default=None, help="python that can import desispec")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--no-big-grid", action="store_true", help="skip the ~2000-template grid")
    parser.add_argument(
        "--as-run-only",
        action="store_true",
        help="only the table of how users run it (fluxcal, one process, batch, first run) and "
        "desispec; no per-template reference loop, no scaling",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--red", help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    parser.add_argument("--grid", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--stars", default="10", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = {"calibrate": child_calibrate, "desispec": child_desispec}[args.child](args)
        print(json.dumps(result))
        return

    repeat = args.repeat or (2 if args.quick else 3)  # new processes
    ref_stars = args.ref_stars or (1 if args.quick else 2)
    with tempfile.TemporaryDirectory(prefix="kspec_bench_") as tmp:
        run_benchmark(Path(tmp), args, repeat, ref_stars)


def _desi_seconds(desi: dict, key: str, n: int) -> float:
    """desispec's time for ``n`` stars from the stars it was timed on (``desi[key]``)."""
    timed = desi[key]
    return sum(r["seconds"] for r in timed) * n / len(timed)


def run_benchmark(tmp: Path, args, repeat: int, ref_stars: int) -> None:
    """Everything, in one run; prints the tables (progress goes to stderr)."""
    import kspec_xr as kx
    from kspec_xr.stages import header_fwhm
    from kspec_xr.testing import make_exposure

    sys.path.insert(0, str(HERE.parent / "tests"))  # the obvious loop the tests check against
    import reference_fit as rf

    repeat_same = max(repeat, 5)  # in-process repeats are cheap; the machine is shared
    wall_start = time.perf_counter()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    say("kspec_xr speed benchmark")
    say(
        f"machine: {platform.machine()}, {os.cpu_count()} cores ({affinity} usable), {platform.system()}"
    )
    say(f"versions: {versions()}")

    # --- inputs ----------------------------------------------------------------
    progress("simulating the exposure")
    sim = make_exposure(
        args.seed,
        n_fiber=N_FIBER,
        n_standard=N_STANDARD,
        n_pixel=N_PIXEL,
        directory=tmp / "exposure",
        name="bench",
    )
    fwhm = header_fwhm(sim.red)
    grid_path = kx.standin_grid_path()  # generates the raw files once if absent
    grid = kx.open_bosz(grid_path)
    n_templates = int((grid["filename"] != "").sum())
    say(
        f"exposure: {N_FIBER} fibers × {N_PIXEL} pixels, {N_STANDARD} standards, "
        f"FWHM {fwhm} Å; grid: {n_templates} stand-in templates (R={grid.attrs['resolution']}), "
        f"raw BOSZ-format files already on disk ({grid_path})"
    )

    # --- cold and warm, new process --------------------------------------------
    cache = tmp / "prepared"
    cache.mkdir()
    child_options = [
        *("--red", str(sim.red_path), "--catalog", str(sim.catalog_path)),
        *("--grid", str(grid_path), "--cache", str(cache)),
    ]
    progress("cold run (new process, empty prepared-grid cache)")
    cold, cold_wall = run_child(sys.executable, "calibrate", *child_options)
    cached_files = sorted(p.name for p in cache.glob("prepared-*") if (p / "meta.json").is_file())
    progress("warm runs, new process")
    warm_new = [run_child(sys.executable, "calibrate", *child_options) for _ in range(repeat)]
    warm_new_best = min(w["calibrate"] for w, _ in warm_new)
    warm_new_wall = min(wall for _, wall in warm_new)

    # --- warm, same process ------------------------------------------------------
    progress("warm runs, same process")

    def calibrate(ds=sim.red, templates=grid, catalog=sim.catalog_path):
        return kx.flux_calibrate(ds, catalog=catalog, templates=templates, cache=cache).compute()

    calibrate()  # loads the cache file into memory
    warm, out = best_of(repeat_same, calibrate)
    stages = stage_times(sim.red, sim.catalog_path, grid, cache, repeat_same)

    # --- the per-template reference -------------------------------------------------
    wave = np.asarray(out["wavelength"].values, dtype=float)
    prep = kx.prepare_templates(grid, wave, fwhm, cache=cache)
    fast = prep.kernel_grid(0.0)
    stars = rf.standards_inputs(out, prep["band"].values)
    progress("reading the native templates for the reference and desispec")
    start = time.perf_counter()
    margin = (wave[0] * 0.007 + 10.0, wave[-1] * 0.007 + 10.0)  # ±0.7 % (desispec: z ≤ 0.005)
    native = rf.native_templates(
        grid, fast.params, wave_range=(wave[0] - margin[0], wave[-1] + margin[1])
    )
    read_native = time.perf_counter() - start
    work = np.asarray(prep["wavelength"].values, dtype=float)

    def time_reference(shared: bool, n_star: int):
        start = time.perf_counter()
        setup = rf.make_setup(native, work, fwhm, oversample=fast.oversample, shared=shared)
        fits, per_star = [], []
        for star in stars[:n_star]:
            t0 = time.perf_counter()
            fits.append(
                rf.reference_fit_star(
                    star, native, setup, template_mags=fast.mags, pairs=fast.pairs
                )
            )
            per_star.append(time.perf_counter() - t0)
            progress(
                f"reference ({'shared' if shared else 'per-template'} kernel): "
                f"star {len(fits)}/{n_star} {per_star[-1]:.1f} s"
            )
        total = time.perf_counter() - start
        setup_time = total - sum(per_star)
        return {
            "stars": n_star,
            "measured": total,
            "scaled": setup_time + sum(per_star) * len(stars) / n_star,
            "fits": fits,
            "candidates": [f.candidates.size for f in fits],
        }

    ref_stars = min(ref_stars, len(stars))
    shared_stars = min(2 if args.quick else len(stars), len(stars))
    if not args.as_run_only:
        reference = time_reference(False, ref_stars)
        reference_shared = time_reference(True, shared_stars)

    # --- desispec -----------------------------------------------------------------
    desi_python = find_desi_python(args.desi_python)
    desi = None
    desi_note = ""
    if desi_python is None:
        desi_note = (
            "desispec not importable: pip install desispec==0.70.0 (or a venv with "
            "--system-site-packages and --desi-python V/bin/python)"
        )
    else:
        progress(f"desispec match_templates with {desi_python}")
        candidates = [rf.teff_candidates(fast.params[:, 0], s.teff_lo, s.teff_hi) for s in stars]
        cand = np.zeros((len(stars), fast.params.shape[0]), dtype=bool)
        for s, c in enumerate(candidates):
            cand[s, c] = True
        inputs = tmp / "desi_inputs.npz"
        np.savez(
            inputs,
            wave=wave,
            flux=np.array([np.where(s.ivar > 0, s.flux, 0.0) for s in stars]),
            ivar=np.array([s.ivar for s in stars]),
            rdata=gaussian_resolution_data(wave, fwhm, native.resolution),
            stdwave=native.wave,
            stdflux=native.flux,
            params=fast.params,
            cand=cand,
        )
        desi_stars = 3 if args.quick else len(stars)
        try:
            desi, _ = run_child(
                desi_python, "desispec", "--inputs", str(inputs), "--stars", str(desi_stars)
            )
        except RuntimeError as err:
            desi_note = f"desispec failed: {str(err).strip().splitlines()[-1]}"

    desi_total = None
    if desi is not None:
        desi_total = _desi_seconds(desi, "all", len(stars))
    runs = user_runs(tmp, sim, grid_path, repeat, args.quick)
    if args.as_run_only:
        say()
        if desi is None:
            say(f"  desispec: {desi_note}")
        else:
            say(
                f"  desispec {desi['version']} match_templates, all {fast.params.shape[0]} "
                f"templates: {desi_total:.2f} s for {len(stars)} stars"
            )
        report_user_runs(runs, desi_total)
        say(f"benchmark wall time: {time.perf_counter() - wall_start:.0f} s")
        return

    # --- report ------------------------------------------------------------------------
    say()
    say(
        f"timings (seconds; best of {repeat} new processes, best of {repeat_same} in-process calls)"
    )
    rows = [
        ("warm, same process (prepared grid in memory)", warm, ""),
        (
            "warm, new process (calibrate call; cache file loaded)",
            warm_new_best,
            f"process wall {warm_new_wall:.2f} s incl. interpreter and imports",
        ),
        (
            "cold, new process (empty cache: prepare + calibrate)",
            cold["calibrate"],
            f"process wall {cold_wall:.2f} s; imports {cold['import']:.2f} s, open {cold['open']:.2f} s",
        ),
    ]
    for name, seconds, note in rows:
        say(f"  {name:56s} {seconds:8.3f}   {note}")
    say(f"  prepared-grid cache written by the cold run: {', '.join(cached_files) or 'none'}")
    say("  warm, same process, stage by stage: " + ", ".join(f"{k} {v:.3f}" for k, v in stages))
    say()
    n = len(stars)
    for label, ref in (("per-template kernel", reference), ("shared kernel", reference_shared)):
        scaled = "" if ref["stars"] == n else f", scaled from {ref['stars']} of {n} stars"
        say(
            f"  reference loop, {label:20s} {ref['scaled']:8.2f} s for {n} stars "
            f"({ref['scaled'] / n:.2f} s/star; {np.mean(ref['candidates']):.0f} candidates/star"
            f"{scaled})"
        )
    say(f"  (native templates read into memory first, not timed: {read_native:.1f} s)")
    if desi is not None:
        for key, label in (
            ("all", f"all {fast.params.shape[0]} templates"),
            ("box", "colour-box candidates"),
        ):
            total = _desi_seconds(desi, key, n)
            timed = len(desi[key])
            scaled = "" if timed == n else f", scaled from {timed} of {n} stars"
            say(
                f"  desispec {desi['version']} match_templates, {label:22s} {total:8.2f} s "
                f"({total / n:.2f} s/star{scaled})"
            )
        say(
            "  (match_templates(ncpu=1) per star, after one untimed warm-up call; Gaussian LSF "
            "σ = sqrt(FWHM² − (λ/R)²)/2.3548 as 21-diagonal resolution data; native templates "
            "trimmed to the exposure ± 0.7 %)"
        )
    else:
        say(f"  desispec: {desi_note}")

    say()
    say("ratios (how many times faster the warm calibration is) and targets")
    checks = []
    if desi is not None:
        for key, label in (
            ("all", "match_templates, all templates"),
            ("box", "match_templates, colour-box candidates"),
        ):
            total = _desi_seconds(desi, key, n)
            checks.append((label, total / warm, total / warm_new_best, TARGETS["desi"]))
    for label, ref in (
        ("per-template loop (per-template kernel)", reference),
        ("per-template loop (shared kernel)", reference_shared),
    ):
        checks.append(
            (label, ref["scaled"] / warm, ref["scaled"] / warm_new_best, TARGETS["reference"])
        )
    say(f"  {'against':42s} {'÷ warm same':>12s} {'÷ warm new':>11s} {'target':>8s}")
    for label, same, new, target in checks:
        say(
            f"  {label:42s} {same:11.1f}× {new:10.1f}× {'≥' + format(target, 'g') + '×':>8s}  "
            f"{verdict(same >= target)}"
        )
    say(
        f"  {'cold time':42s} {cold['calibrate']:11.2f}s {'':11s} {'≤10 s':>8s}  "
        f"{verdict(cold['calibrate'] <= TARGETS['cold'])}"
    )
    say(
        f"  {'warm time (same process)':42s} {warm:11.3f}s {'':11s} {'<1 s':>8s}  "
        f"{verdict(warm < TARGETS['warm'])}"
    )

    say()
    say("agreement on the same stars (fast best node / reference best node / desispec)")
    say(
        f"  {'star':>4s} {'fast Teff logg [M/H]':>22s} {'RV':>8s} | {'reference node':>20s} "
        f"{'RV':>8s} | {'desispec (all) params':>22s} {'RV':>8s}"
    )
    ref_fits = reference_shared["fits"]
    for s in range(n):
        f_node = fast.params[int(out["fit_template"].values[s])]
        line = (
            f"  {s:4d} {f_node[0]:7.0f} {f_node[1]:5.2f} {f_node[2]:+6.2f}"
            f"    {float(out['fit_rv'].values[s]):8.2f} |"
        )
        if s < len(ref_fits):
            r = ref_fits[s]
            line += f" {r.teff:7.0f} {r.logg:5.2f} {r.mh:+6.2f} {r.rv:8.2f} |"
        else:
            line += f" {'':20s} {'':8s} |"
        if desi is not None and s < len(desi["all"]):
            d = desi["all"][s]
            line += f" {d['params'][0]:7.0f} {d['params'][1]:5.2f} {d['params'][2]:+6.2f}"
            line += f"    {d['rv']:8.2f}"
        say(line)
    say("  (fast: best node before refinement, RV after; reference: shared-kernel loop;")
    say("   desispec: coefficient-weighted parameters and its redshift × c)")

    report_user_runs(runs, desi_total)

    # --- scaling ---------------------------------------------------------------------
    if not args.no_scaling:
        say()
        say(f"scaling of the warm time (same process, best of {repeat_same}; {N_PIXEL} pixels)")
        say(
            f"  {'fibers':>6s} {'standards':>9s} {'templates':>9s} {'cand./star':>10s} "
            f"{'warm s':>8s} {'÷ 300/572':>9s}  note"
        )

        def row(n_fiber, count, cand, seconds, note=""):
            say(
                f"  {n_fiber:6d} {N_STANDARD:9d} {count:9d} {cand:10.0f} {seconds:8.3f} "
                f"{seconds / warm:8.2f}×  {note}"
            )

        def mean_candidates(result, prepared):
            teff = np.asarray(prepared["teff"].values, dtype=float)
            lo, hi = result["teff_lo"].values, result["teff_hi"].values
            return np.mean(
                [rf.teff_candidates(teff, a, b).size for a, b in zip(lo, hi, strict=True)]
            )

        base_cand = mean_candidates(out, prep)
        for n_fiber in (100, 300, 1000):
            if n_fiber == N_FIBER:
                row(n_fiber, n_templates, base_cand, warm, "the exposure above")
                continue
            progress(f"scaling: {n_fiber} fibers")
            other = make_exposure(
                args.seed,
                n_fiber=n_fiber,
                n_standard=N_STANDARD,
                n_pixel=N_PIXEL,
                directory=tmp / f"fibers{n_fiber}",
                name="bench",
            )

            def run_other(other=other):
                return calibrate(ds=other.red, catalog=other.catalog_path)

            run_other()
            seconds, result = best_of(repeat_same, run_other)
            row(n_fiber, n_templates, mean_candidates(result, prep), seconds)

        grids = [
            (
                "subset of the bundled grid: log g 4.0, 4.5; [M/H] -1, -0.5, 0, +0.25",
                lambda: subset_grid(grid, "bench104", logg=[4.0, 4.5], mh=[-1.0, -0.5, 0.0, 0.25]),
            ),
            ("the bundled grid", None),
        ]
        if not args.no_big_grid:
            grids.append(
                ("new stand-in grid: Teff step 125 K, log g 2.5-5.0, [M/H] -2.5..+0.75", big_grid)
            )
        for label, make in grids:
            if make is None:
                row(N_FIBER, n_templates, base_cand, warm, label)
                continue
            try:
                g = make(tmp) if make is big_grid else make()
            except Exception as err:  # a scaling row must not lose the tables above
                say(f"  (skipped: {label}: {err})")
                continue
            count = int((g["filename"] != "").sum())
            progress(f"scaling: {count} templates")
            start = time.perf_counter()
            calibrate(templates=g)  # prepares the grid (cold, in this process) and caches it
            cold_here = time.perf_counter() - start
            seconds, result = best_of(repeat_same, lambda g=g: calibrate(templates=g))
            prepared = kx.prepare_templates(g, wave, fwhm, cache=cache)
            row(
                N_FIBER,
                count,
                mean_candidates(result, prepared),
                seconds,
                f"{label}; first call (prepares it) {cold_here:.1f} s",
            )

    say()
    say(f"benchmark wall time: {time.perf_counter() - wall_start:.0f} s")


if __name__ == "__main__":
    main()
