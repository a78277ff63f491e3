"""Calibrate many exposures on dask.distributed: one task per exposure.

:func:`calibrate_many` sends every exposure to a worker as one task.  The task
opens the RED file, runs :func:`kspec_xr.flux_calibrate`, computes it once and
writes the calibrated RED file from NumPy data *inside the worker*; only a small
dict of numbers and strings comes back.  No FITS object or Dataset crosses the
graph, and the large constants (catalogue, template grid) travel as file paths.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ._base.errors import CatalogError, KspecError
from ._base.memory import without_huge_pages
from ._base.paths import atomic_output, same_file, sweep_stale_temps
from ._base.threads import ENV as THREADS_ENV
from ._base.threads import available_cpus, kernel_threads
from .nightly import NIGHTLY_NAME, nightly_transfer
from .pipeline import calibrate_file, check_options, flux_calibrate
from .templates import open_bosz

log = logging.getLogger(__name__)

__all__ = [
    "calibrate_many",
    "local_cluster",
    "worker_environment",
    "SUMMARY_NAME",
    "SUMMARY_COLUMNS",
]

#: file name of the batch summary, written in ``out_dir``
SUMMARY_NAME = "kspec_xr_batch_summary.csv"

#: columns of the summary table, in order
SUMMARY_COLUMNS = (
    "input",
    "output",
    "status",
    "n_standards",
    "n_used",
    "n_rejected",
    "rms",
    "rejected",
    "warning",
    "seconds",
    "error",
)

_MAX_MESSAGE = 800  # characters kept of an error message in the summary


# =============================================================================
# the task (runs in a worker; everything it gets and returns is small)
# =============================================================================

_sync_lock = threading.Lock()
_sync_depth = 0
_sync_context = None


@contextlib.contextmanager
def _synchronous_dask():
    """Use dask's synchronous scheduler while any exposure task runs in this process.

    Inside a distributed worker a bare ``.compute()`` would go to the worker's
    client and block the worker thread while waiting for sub-tasks (a deadlock
    with one thread per worker).  One exposure is one task, so its graph is
    computed in the task's own thread.  ``dask.config`` is process-global, hence
    the reference count when a worker runs several tasks in threads.
    """

    global _sync_depth, _sync_context
    with _sync_lock:
        if _sync_depth == 0:
            _sync_context = dask.config.set(scheduler="synchronous")
            _sync_context.__enter__()
        _sync_depth += 1
    try:
        yield
    finally:
        with _sync_lock:
            _sync_depth -= 1
            if _sync_depth == 0:
                context, _sync_context = _sync_context, None
                context.__exit__(None, None, None)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or repr(err)
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
    return text


def _message(err: BaseException, path: str, *, with_type: bool) -> str:
    """One line naming the input file (prefixed when the error does not name it)."""
    text = _one_line(err)
    if with_type:
        text = f"{type(err).__name__}: {text}"
    if path not in text and Path(path).name not in text:
        text = f"{path}: {text}"
    return text


def _calibrate(job: dict) -> dict:
    options = dict(job["options"])
    templates = options.get("templates")
    if templates is None or isinstance(templates, str):
        options["templates"] = _worker_grid(templates, _stamp(templates))
    result = calibrate_file(
        job["input"],
        job["output"],
        catalog=job["catalog"],
        overwrite=job["overwrite"],
        resume=job["resume"],
        **options,
    )
    return result.summary()


def _stamp(path: str | None) -> tuple | None:
    """What tells a changed template folder or cube from the one opened before."""
    if path is None:
        return None
    with contextlib.suppress(OSError):
        info = os.stat(path)
        return (info.st_ino, info.st_size, info.st_mtime_ns)
    return ("missing",)


@functools.lru_cache(maxsize=4)
def _worker_grid(path: str | None, stamp) -> xr.DataArray:
    """The template grid opened once per worker process (lazy; its prepared forms are cached
    in memory by :func:`kspec_xr.prepare_templates`), for every exposure of the batch."""
    return open_bosz(path)


def _run_exposure(job: dict) -> dict:
    """The task: calibrate one exposure and write it; return a one-row summary.

    Input errors (``KspecError``, ``ValueError``, ``OSError``) and unexpected
    exceptions become ``status='failed'`` with a one-line message, so the
    batch carries on.  ``write_red`` writes a temporary file and renames it,
    so a failure leaves no partial output; nothing else is removed.
    """
    start = time.perf_counter()
    row = _empty_row(job["input"], job["output"])
    try:
        with _synchronous_dask():
            row.update(_calibrate(job))
    except (KspecError, ValueError, OSError) as err:
        row.update(status="failed", error=_message(err, job["input"], with_type=False))
    except Exception as err:
        row.update(status="failed", error=_message(err, job["input"], with_type=True))
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _empty_row(source: str, output: str) -> dict:
    return {
        "input": source,
        "output": output,
        "status": "failed",
        "n_standards": None,
        "n_used": None,
        "n_rejected": None,
        "rms": math.nan,
        "seconds": math.nan,
        "rejected": "",
        "warning": "",
        "error": "",
    }


# =============================================================================
# argument checks (client side, before any cluster is started)
# =============================================================================


def _as_path(value, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{what} must be a str or os.PathLike, not {type(value).__name__}; large inputs go "
            "to the workers as file paths"
        )
    return Path(os.path.abspath(os.path.expanduser(os.fspath(value))))


def _input_paths(paths) -> list[tuple[str, Path]]:
    """``(as given, absolute path)`` for every input."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, Iterable):
        raise TypeError(f"paths must be a list of RED file paths, not {type(paths).__name__}")
    inputs = []
    for p in paths:
        path = _as_path(p, "every input path")
        inputs.append((os.fspath(p), path))
    if not inputs:
        raise KspecError("calibrate_many: no input files given")
    return inputs


def _check_names(inputs: list[tuple[str, Path]]) -> None:
    seen: dict[str, Path] = {}
    for _, path in inputs:
        if path.name not in seen:
            seen[path.name] = path
            continue
        other = seen[path.name]
        if other == path:
            raise KspecError(f"{path} is given twice; give every input once")
        raise KspecError(
            f"{other} and {path} share the file name {path.name!r}; every output is written "
            "under its input's name in out_dir, so calibrate them into different folders"
        )


def _catalog_lookup(catalog):
    """A function input path -> absolute catalogue path (or None when the mapping lacks it)."""
    if isinstance(catalog, Mapping):
        by_path: dict[Path, Path] = {}
        by_name: dict[str, Path] = {}
        for key, value in catalog.items():
            target = _as_path(value, f"catalog[{key!r}]")
            key_text = os.fspath(_as_path(key, "every key of the catalog mapping"))
            by_path.setdefault(Path(key_text).resolve(), target)
            if isinstance(key, (str, os.PathLike)) and Path(os.fspath(key)).name == os.fspath(key):
                by_name.setdefault(os.fspath(key), target)

        def lookup(path: Path):
            return by_path.get(path.resolve()) or by_name.get(path.name)

        return lookup
    if catalog is None:
        raise TypeError("catalog is required: one catalogue path, or {input: catalogue path}")
    target = _as_path(catalog, "catalog (or every value of a catalog mapping)")
    return lambda path: target


def _calibration_options(options: dict) -> dict:
    allowed = {
        name
        for name, p in inspect.signature(flux_calibrate).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "catalog"
    }
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"calibrate_many got unknown option(s) {', '.join(unknown)}; the options passed to "
            f"flux_calibrate are {', '.join(sorted(allowed))}"
        )
    clean = check_options(**options)
    for name in ("templates", "cache"):
        value = clean.get(name)
        if value is None or isinstance(value, bool):
            continue
        clean[name] = os.fspath(_as_path(value, name))
    return clean


def _catalog_checker(options: dict):
    """A function catalogue path -> None, or the one-line reason it cannot be used (cached)."""
    from .io.catalog import check_catalog

    seen: dict[Path, str | None] = {}

    def problem(path: Path) -> str | None:
        if path not in seen:
            try:
                check_catalog(
                    path, bands=options.get("bands"), match=options.get("match", "position")
                )
                seen[path] = None
            except KspecError as err:
                seen[path] = str(err)
        return seen[path]

    return problem


def _raise_if(problem: str | None) -> None:
    if problem is not None:
        raise CatalogError(problem)


# =============================================================================
# the client side
# =============================================================================


@contextlib.contextmanager
def _connect(client, workers: int | None, n_jobs: int):
    """Yield a ``distributed.Client``: the caller's, one for an address, or a LocalCluster."""
    from distributed import Client  # deferred: distributed is slow to import, needed here only

    if isinstance(client, Client):
        yield client
        return
    if isinstance(client, str):
        try:
            own = Client(client, set_as_default=False)
        except OSError as err:
            raise KspecError(
                f"cannot connect to the dask scheduler at {client} ({_one_line(err)}); check the "
                "address and that the scheduler is running"
            ) from err
        with own:
            yield own
        return
    n_workers = workers or max(1, min(os.cpu_count() or 1, n_jobs))
    with local_cluster(n_workers) as cluster, Client(cluster, set_as_default=False) as own:
        yield own


def worker_environment(n_workers: int = 1) -> dict:
    """Environment for ``n_workers`` worker processes on this machine.

    Each worker gets its share of the CPUs for the fit's threads
    (``KSPEC_XR_THREADS``, :mod:`kspec_xr._base.threads`; a value the caller
    set is kept): with one worker on 2 cores, an exposure's stars are fitted
    in 2 threads, with two workers in one each.

    numpy without transparent huge pages (``NUMPY_MADVISE_HUGEPAGE=0``, unless
    the caller set it: see :mod:`kspec_xr._base.memory`); the rest is
    distributed's defaults less ``MALLOC_TRIM_THRESHOLD_``.

    distributed sets ``MALLOC_TRIM_THRESHOLD_=65536`` in the workers to hand
    freed memory back to the OS.  Setting it also fixes glibc's mmap threshold
    at 128 KiB, so every large temporary array of a calibration is a fresh
    ``mmap`` and its page faults: an exposure took 0.62 s in a worker instead
    of 0.41 s.  Memory here is bounded by the exposures in flight, so the
    default allocator is kept.
    """

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    if not os.environ.get(THREADS_ENV, "").strip():
        env[THREADS_ENV] = str(max(1, available_cpus() // max(1, n_workers)))
    without_huge_pages(env)
    return env


@contextlib.contextmanager
def local_cluster(n_workers: int):
    """The LocalCluster ``calibrate_many`` starts: loopback, one thread per process.

    distributed's nanny writes the workers' environment (:func:`worker_environment`,
    and its own variables) into this process's ``os.environ`` to spawn them, and
    leaves it there; it is put back as it was once they are up (a respawned worker gets it again from
    its nanny) and when the cluster closes, so that a batch does not change the
    caller's session (its threads, numpy's huge pages, the next batch's workers).
    """
    from distributed import LocalCluster  # deferred: slow to import

    environment = worker_environment(n_workers)
    saved = dict(os.environ)  # (the nanny adds PYTHONHASHSEED and __DASK_PARENT_PID too)

    def restore() -> None:
        for key in [key for key in os.environ if key not in saved]:
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value

    try:
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": environment}),
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                # no dashboard; the scheduler's small HTTP endpoint on a free loopback port
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                memory_limit="auto",  # the machine's memory shared evenly among the workers
            ) as cluster,
        ):
            restore()
            yield cluster
    finally:
        restore()


def _window(client) -> int:
    """Exposures in flight: twice the worker threads (at least 2, e.g. while jobs start)."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:  # scheduler busy or reconnecting: keep a small window
        threads = 1
    return max(2, 2 * threads)


def _lost_row(job: dict, err: BaseException) -> dict:
    from distributed import KilledWorker  # deferred: slow to import

    row = _empty_row(job["input"], job["output"])
    if isinstance(err, KilledWorker):
        text = (
            f"{job['input']}: the workers running it died repeatedly (KilledWorker: "
            f"{_one_line(err)}); it may need more memory per worker"
        )
    else:
        text = _message(err, job["input"], with_type=True)
    row["error"] = text
    return row


def _progress(k: int, n: int, row: dict) -> None:
    name = Path(row["input"]).name
    seconds = row["seconds"]
    timing = f" ({seconds:.1f} s)" if isinstance(seconds, float) and math.isfinite(seconds) else ""
    line = f"[{k}/{n}] {name}: {row['status']}{timing}"
    if row["status"] == "failed":
        line += f": {row['error']}"
    with _shown():
        log.info(line)


@contextlib.contextmanager
def _shown():
    """Make this module's INFO lines (the progress) visible on stderr.

    A program that configured logging decides itself; otherwise a handler to
    stderr is attached for the moment.
    """
    handler = None
    if not log.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        if handler is not None:
            log.removeHandler(handler)
            log.setLevel(logging.NOTSET)


def _remove_stale_temporaries(output: Path) -> None:
    """Remove the temporary files of ``write_red`` left by a worker killed mid-write.

    Only those of ``output`` whose writer is gone (or a day old): a concurrent
    run's file in flight stays (:func:`kspec_xr._base.paths.sweep_stale_temps`).
    """
    sweep_stale_temps(output)


def _write_summary(table: pd.DataFrame, path: Path) -> None:
    with atomic_output(path) as tmp:
        table.to_csv(tmp, index=False)


def _add_nightly(table: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Combine the batch's calibrated outputs into the nightly transfer function."""
    done = table["status"].isin(["ok", "skipped"]).to_numpy()
    table["nightly_scale"] = np.nan
    if not done.any():
        return table
    outputs = table.loc[done, "output"].tolist()
    night = nightly_transfer(outputs)
    with atomic_output(out_dir / NIGHTLY_NAME) as tmp:
        night.to_netcdf(tmp)
    table.loc[done, "nightly_scale"] = night["exposure_scale"].values
    table.attrs["nightly_path"] = os.fspath(out_dir / NIGHTLY_NAME)
    return table


def calibrate_many(
    paths,
    out_dir,
    *,
    catalog,
    client=None,
    workers: int | None = None,
    nightly: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **options,
) -> pd.DataFrame:
    """Flux-calibrate many RED files on dask.distributed, one task per exposure.

    Every exposure is one task (``client.submit(..., pure=False, retries=2)``)
    that opens the RED file, runs :func:`kspec_xr.flux_calibrate`, computes it
    once and writes ``out_dir / <input file name>`` with
    :func:`kspec_xr.write_red`, all inside the worker.  The task returns a
    small dict; no Dataset or FITS object crosses the graph.  Catalogue and
    template grid go to the workers as file paths, so the workers must see the
    same file system (absolute paths are sent).

    Parameters
    ----------
    paths : path or iterable of paths
        The RED files.  Their file names must differ (outputs keep them).
    out_dir : path
        Folder of the calibrated files and of the summary table; created if
        missing.
    catalog : path or mapping
        One standard-star catalogue for every exposure, or
        ``{input path or file name: catalogue path}``.
    client : None, distributed.Client or str
        ``None``: start a ``LocalCluster`` on 127.0.0.1 (``workers`` processes,
        default ``min(os.cpu_count(), len(paths))``, one thread each, memory
        shared evenly, no dashboard) and close it at the end.  A ``Client`` is
        used as is; a string is a scheduler address (``"tcp://host:8786"``).
    workers : int, optional
        Worker processes of the LocalCluster (only with ``client=None``).
    nightly : bool
        After the batch, combine the calibrations of every exposure that is
        ``'ok'`` or ``'skipped'`` into a nightly transfer function
        (:func:`kspec_xr.nightly.nightly_transfer`), written to
        ``out_dir / "kspec_xr_nightly_calibration.nc"``; the summary gains a
        ``nightly_scale`` column (each exposure's calibration over the
        nightly one: > 1 means less light got through, e.g. clouds).  Every
        exposure is still calibrated by its own standards.
    resume : bool
        Skip an exposure whose output exists, opens with
        :func:`kspec_xr.open_red` and is flux-calibrated (``FLUXCAL = T``, or
        for files without that card flux units of erg/cm2/s/A):
        status ``'skipped'``.  An output that cannot be read (partial,
        truncated) is redone and replaced.
    overwrite : bool
        Replace existing outputs (otherwise such an exposure fails).  The
        input file itself is never overwritten: an exposure whose output
        would be its input fails.
    progress : bool
        Print ``[k/N] name: status (seconds)`` to stderr as exposures finish.
    **options
        Passed to :func:`kspec_xr.flux_calibrate`: ``templates`` (a path or
        None, never a grid object), ``fwhm``, ``metric``, ``smooth``,
        ``match``, ``radius``, ``mask_regions``, ``mask_lines``, ``gating``,
        ``sigma``, ``min_stars``, ``cache``.

    Returns
    -------
    pandas.DataFrame
        One row per input, in input order: ``input``, ``output``, ``status``
        (``'ok'``, ``'failed'``, ``'skipped'``), ``n_standards``, ``n_used``
        (the standards that contribute), ``n_rejected``, ``rms`` (median of
        ``calibration_rms``), ``seconds`` (task wall time), ``rejected``
        (fiber and reason of every rejected standard), ``warning`` (a
        calibration resting on one or two stars) and ``error`` (one line
        naming the file).  Also written atomically to
        ``out_dir / "kspec_xr_batch_summary.csv"``.

    Raises
    ------
    TypeError
        Arguments of the wrong type, an unknown option, or a grid/catalogue
        object instead of a path.
    KspecError
        No input, or two inputs with the same file name.

    Notes
    -----
    *Failures.*  A ``KspecError``/``ValueError``/``OSError`` for one exposure
    (missing or corrupt file, no usable standard, existing output, …) and any
    unexpected exception (reported with its type) make that row ``'failed'``;
    the batch goes on.  Outputs are written to a temporary file and renamed,
    so a failure never leaves a partial output, and temporary files left by a
    worker killed mid-write are removed at the end of the batch.

    *Memory.*  At most twice the number of worker threads exposures are in
    flight: the next one is submitted when one finishes
    (``distributed.as_completed``), so memory is bounded by the exposures in
    flight, never by the batch size; the results kept are the small dicts.

    *Dead workers.*  When a worker dies the scheduler reruns its task
    elsewhere; after ``distributed.scheduler.allowed-failures`` deaths (3 by
    default) the exposure is recorded as failed with the ``KilledWorker``
    message.  Each task computes with dask's synchronous scheduler in its own
    thread (parallelism is across exposures).

    *On a SLURM or PBS cluster* (``pip install dask-jobqueue``; kspec_xr must
    be installed in the jobs' environment and the files on a shared file
    system)::

        from dask_jobqueue import SLURMCluster     # or PBSCluster
        from distributed import Client
        cluster = SLURMCluster(cores=8, processes=8, memory="32GB",
                               walltime="02:00:00", queue="normal")
        cluster.scale(jobs=4)                       # 4 jobs × 8 single-thread workers
        summary = kx.calibrate_many(paths, "night/fcal", catalog="stars.csv",
                                    client=Client(cluster))

    or from the command line, pointing at the cluster's scheduler
    (``cluster.scheduler_address``, or a ``dask scheduler`` started by hand)::

        kspec-xr batch 'night/*red.fits' --catalog stars.csv --out-dir night/fcal \\
            --scheduler tcp://10.0.0.5:8786

    Examples
    --------
    >>> summary = kx.calibrate_many(sorted(Path("night").glob("*red.fits")),
    ...                             "night/fcal", catalog="stars.csv")  # doctest: +SKIP
    >>> summary.status.value_counts()                                   # doctest: +SKIP
    """
    from distributed import Client, as_completed  # deferred: slow to import

    # --- validate everything before starting a cluster ------------------------
    if client is not None and not isinstance(client, (str, Client)):
        raise TypeError(
            f"client must be None, a distributed.Client or a scheduler address, "
            f"not {type(client).__name__}"
        )
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int, not {type(workers).__name__}")
        if workers < 1:
            raise ValueError(f"workers={workers}: give at least one worker")
        if client is not None:
            raise ValueError(
                "workers only sizes the LocalCluster started when client=None; size your own "
                "cluster instead"
            )
    inputs = _input_paths(paths)
    _check_names(inputs)
    catalog_for = _catalog_lookup(catalog)
    options = _calibration_options(options)
    kernel_threads(1)  # a bad KSPEC_XR_THREADS is refused here, not by every exposure
    catalog_problem = _catalog_checker(options)
    if not isinstance(catalog, Mapping):  # one catalogue for all: refused at once if unusable
        _raise_if(catalog_problem(catalog_for(inputs[0][1])))
    out_dir = _as_path(out_dir, "out_dir")
    if out_dir.exists() and not out_dir.is_dir():
        raise KspecError(f"out_dir {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    n = len(inputs)
    rows: list[dict | None] = [None] * n
    jobs: list[tuple[int, dict]] = []
    done = 0

    def finish(index: int, row: dict) -> None:
        nonlocal done
        rows[index] = row
        done += 1
        if progress:
            _progress(done, n, row)

    for index, (given, source) in enumerate(inputs):
        output = out_dir / source.name
        cat = catalog_for(source)
        problem = None if cat is None else catalog_problem(cat)
        if problem is not None:
            problem = f"{given}: {problem}"
        elif same_file(source, output):
            problem = (
                f"{given}: the output {output} would be the input itself; choose another "
                "out_dir (kspec_xr never overwrites its input)"
            )
        elif cat is None:
            problem = (
                f"{given}: no catalogue for this exposure in the catalog mapping; add its path "
                "or file name as a key"
            )
        job = {
            "input": os.fspath(source),
            "output": os.fspath(output),
            "catalog": None if cat is None else os.fspath(cat),
            "options": options,
            "overwrite": bool(overwrite),
            "resume": bool(resume),
        }
        if problem is not None:
            finish(index, {**_empty_row(job["input"], job["output"]), "error": problem})
        else:
            jobs.append((index, job))

    # --- one task per exposure, a bounded window in flight --------------------
    if jobs:
        with _connect(client, workers, len(jobs)) as active:
            pending = iter(jobs)
            in_flight: dict = {}
            queue = as_completed(loop=active.loop)

            def submit_more() -> None:
                window = _window(active)
                while len(in_flight) < window:
                    nxt = next(pending, None)
                    if nxt is None:
                        return
                    index, job = nxt
                    future = active.submit(
                        _run_exposure,
                        job,
                        key=f"kspec_xr-calibrate-{Path(job['input']).name}-{uuid.uuid4().hex}",
                        pure=False,
                        retries=2,
                    )
                    in_flight[future.key] = (index, job, future)
                    queue.add(future)

            completed = False
            try:
                submit_more()
                for future in queue:
                    index, job, _ = in_flight.pop(future.key)
                    try:
                        row = future.result()
                    except Exception as err:  # the task itself never raises: the worker was lost
                        row = _lost_row(job, err)
                    future.release()
                    finish(index, row)
                    submit_more()
                completed = True
            finally:
                if not completed and in_flight:
                    with contextlib.suppress(Exception):
                        active.cancel([f for _, _, f in in_flight.values()])

    for _, job in jobs:
        _remove_stale_temporaries(Path(job["output"]))

    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    table = table.astype(
        {
            "input": str,
            "output": str,
            "status": str,
            "n_standards": "Int64",
            "n_used": "Int64",
            "n_rejected": "Int64",
            "rms": float,
            "seconds": float,
            "error": str,
        }
    )
    table.attrs.update(nightly=bool(nightly), out_dir=os.fspath(out_dir))
    if nightly:
        table = _add_nightly(table, out_dir)
    summary_path = out_dir / SUMMARY_NAME
    _write_summary(table, summary_path)
    table.attrs["summary_path"] = os.fspath(summary_path)
    return table
