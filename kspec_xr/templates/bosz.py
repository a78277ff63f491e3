"""The BOSZ 2024 template grid as a lazy, dask-backed :class:`xarray.DataArray`.

BOSZ 2024 (Mészáros et al. 2024, A&A 688, A197) ships one gzip text file per
model, named for its parameters::

    bosz2024_{atm}_t{Teff}_g{logg:+.1f}_m{[M/H]:+.2f}_a{[α/M]:+.2f}_c{[C/M]:+.2f}_v{vturb}_r{R}_{resam|noresam}.txt.gz

in the folders ``r{R}/m{[M/H]:+.2f}/`` of the archive, with the shared
wavelength grid of each R in ``wavelength_grids/bosz2024_wave_r{R}.txt``.
``resam`` files hold two columns (``H_λ``, continuum) on that grid; ``noresam``
files hold three (``λ``, ``H_λ``, continuum).  ``H_λ`` is the Eddington flux;
the surface flux is ``F_λ = 4π·H_λ`` in erg/s/cm²/Å.

This module has a NumPy reader for one file (:func:`read_bosz_table`), the
lazy grid (:func:`open_grid`, public as :func:`kspec_xr.open_bosz`) and a
packer to a trimmed float32 netCDF cube (:func:`pack_bosz`) that
:func:`open_grid` opens the same way.  The name codec is in ``_names``.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import os
import re
import stat
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from .._base.errors import OutputExistsError, TemplateError
from .._base.paths import atomic_output
from ._names import (
    _ATLAS,
    _MARCS,
    _NAME_RE,
    _WAVE_RE,
    PARAM_DIMS,
    STANDIN_MARKER,
    _integer,
    _params_from_match,
    wave_grid_name,
)

__all__ = ["read_bosz_table", "open_grid", "pack_bosz"]

_DIMS = (*PARAM_DIMS, "wavelength")
_FOUR_PI = 4.0 * np.pi
_FLUX_UNITS = "erg/s/cm2/A"
_SCAN_DEPTH = 3  # sub-folder levels searched below the given folder
_PACKED_SUFFIXES = (".nc", ".nc4", ".netcdf")

#: bound on the bytes of one text row of a BOSZ file (three %.17e columns fit) ...
ROW_BYTES = 128
#: ... and on the rows of a file whose length is not known in advance (a ``noresam``
#: or ``orig`` file): 512 MB of text at most.  A ``resam`` file has the rows of its
#: wavelength grid (15·R: 150 000, ~4 MB, at R = 10 000).
UNKNOWN_ROWS = 4_000_000
_RESAM_ROWS_PER_R = 15  # rows of the archive's shared wavelength grid per unit of R


def _fix_hint(path) -> str:
    p = Path(path)
    if any((folder / STANDIN_MARKER).is_file() for folder in p.parents[:3]):
        return (
            f"the file {path} of the stand-in grid is damaged: kx.standin_grid_path(verify=True) "
            "generates it again"
        )
    return f"the file {path} is corrupt, truncated or not a BOSZ file: download it again (or remove it)"


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _not_regular(path, mode: int) -> TemplateError:
    return TemplateError(
        f"{path} is {_file_kind(mode)}, not a regular file, so it is not read; "
        "remove it or put the BOSZ file itself there"
    )


def _read_bounded(path, max_rows: int) -> bytes:
    """The text of a (gzip or plain) file, refused beyond ``max_rows`` rows of :data:`ROW_BYTES`.

    Only regular files are opened (a FIFO or device would block or never end),
    and without blocking (``O_NONBLOCK``, checked again on the open file);
    decompression stops at the bound, so a gzip bomb costs at most that much
    memory.  Raises ``OSError``, ``EOFError`` or ``zlib.error`` for unreadable
    or corrupt files (the caller names the file).
    """
    limit = int(max_rows) * ROW_BYTES + 65536
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    with os.fdopen(os.open(path, flags), "rb") as fh:
        st = os.fstat(fh.fileno())  # the file opened, not the name checked
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        head = fh.read(2)
        packed = head == b"\x1f\x8b"
        if packed:
            fh.seek(0)
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                raw = gz.read(limit + 1)
        else:
            raw = head + fh.read(limit + 1 - len(head))
    if len(raw) > limit:
        kind = "decompressed" if packed else "plain"
        raise TemplateError(
            f"{path} holds more than {limit / 1e6:.3g} MB of text ({kind}), beyond {max_rows} "
            "rows of a BOSZ file of its kind, so it is not read: it is not a BOSZ file, or is "
            "damaged; download it again (or remove it)"
        )
    return raw


def _max_rows(path, nrows: int | None) -> int:
    """Rows a BOSZ file may hold: ``nrows`` when known, else from its name (see :data:`UNKNOWN_ROWS`)."""
    if nrows is not None:
        return int(nrows)
    match = _NAME_RE.fullmatch(os.path.basename(os.fspath(path)))
    if match and match["kind"] == "resam" and match["resolution"] != "orig":
        return 2 * _RESAM_ROWS_PER_R * int(match["resolution"])  # twice the archive's grid
    return UNKNOWN_ROWS


def read_bosz_table(
    path, *, ncols: int | None = None, nrows: int | None = None, start: int = 0, stop=None
) -> np.ndarray:
    """Rows ``start:stop`` of a BOSZ text file (gzip or plain) as a float array.

    Parameters
    ----------
    path : str or path-like
        A ``.txt.gz`` (or ``.txt``) file of whitespace-separated columns.
    ncols : int, optional
        Required number of columns (2 for ``resam``, 3 for ``noresam``).
    nrows : int, optional
        Required number of rows of the whole file (the length of its
        wavelength grid): a file of another length is rejected.
    start, stop : int, optional
        Row slice to parse; the other rows are counted but not converted.

    Returns
    -------
    numpy.ndarray
        Shape ``(stop − start, ncols)``, float64.

    Raises
    ------
    TemplateError
        Naming the file, if it cannot be read, is truncated (gzip stream or
        rows) or has the wrong shape; if it is not a regular file (a FIFO or
        device, never opened); if it holds more text than ``nrows`` rows (or,
        without ``nrows``, a file of its kind) can (:data:`ROW_BYTES` per row),
        decompression stopping there.
    """
    try:
        raw = _read_bounded(path, _max_rows(path, nrows))
    except (OSError, EOFError, zlib.error) as exc:
        raise TemplateError(f"cannot read {path}: {_reason(exc)}; {_fix_hint(path)}") from exc
    raw = raw.rstrip()
    total = raw.count(b"\n") + 1 if raw else 0
    if total == 0:
        raise TemplateError(f"{path} is empty; {_fix_hint(path)}")
    if nrows is not None and total != nrows:
        raise TemplateError(
            f"{path} has {total} rows where its wavelength grid has {nrows} (truncated, or a file "
            f"of another resolution); {_fix_hint(path)}"
        )
    stop = total if stop is None else stop
    if not 0 <= start < stop <= total:
        raise TemplateError(
            f"{path} has {total} rows, fewer than the {stop} asked for; {_fix_hint(path)}"
        )
    if (start, stop) != (0, total):
        newlines = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 10)
        first = 0 if start == 0 else int(newlines[start - 1]) + 1
        last = len(raw) if stop == total else int(newlines[stop - 1])
        raw = raw[first:last]
    table = _parse_fixed_width(raw)
    try:
        if table is None:
            table = np.loadtxt(io.BytesIO(raw), dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise TemplateError(f"cannot parse {path}: {exc}; {_fix_hint(path)}") from exc
    if table.shape[0] != stop - start or (ncols is not None and table.shape[1] != ncols):
        raise TemplateError(
            f"{path} holds a {table.shape[0]}×{table.shape[1]} table in rows {start}:{stop}, "
            f"expected {stop - start}×{ncols or table.shape[1]}; {_fix_hint(path)}"
        )
    return table


_FIELD = re.compile(rb"(\s*)(\d)\.(\d{1,14})[eE]([+-])(\d{1,3})")
_POW10 = np.array([float(10**i) for i in range(23)])  # exact doubles


def _parse_fixed_width(raw: bytes) -> np.ndarray | None:
    """The table of a text whose every row has one layout of ``d.ddde±XX`` fields, or None.

    Such a text (the stand-in grid's, written with ``%.4e``) is decoded with
    NumPy from its digits: the mantissa ``m`` (below 10**15) and the power
    ``k`` (|k| ≤ 22) are exact doubles, so ``m·10**k`` (or ``m / 10**−k``)
    is rounded once, to the double ``float()`` and ``numpy.loadtxt`` give.
    Any other text (another layout in some row, signs, wider powers) is
    None: the caller parses it with ``numpy.loadtxt``.
    """
    width = raw.find(b"\n") + 1 or len(raw) + 1
    if not raw or (len(raw) + 1) % width:
        return None
    first = raw[: width - 1]
    fields, pos = [], 0
    while pos < len(first):
        match = _FIELD.match(first, pos)
        if match is None:
            return None
        fields.append(match)
        pos = match.end()
    # one row of the transpose per character position: every test and sum is contiguous
    chars = np.ascontiguousarray(np.frombuffer(raw + b"\n", dtype=np.uint8).reshape(-1, width).T)
    template = np.frombuffer(first + b"\n", dtype=np.uint8)
    is_digit = np.zeros(width, dtype=bool)
    for match in fields:
        for group in (2, 3, 5):
            is_digit[match.start(group) : match.end(group)] = True
    sign_at = [match.start(4) for match in fields]
    fixed = ~is_digit
    fixed[sign_at] = False
    signs = chars[sign_at]
    if not (
        np.all(chars[fixed] == template[fixed, None])
        and np.all(chars[is_digit] - np.uint8(ord("0")) <= 9)  # a non-digit wraps above 9
        and np.all((signs == ord("+")) | (signs == ord("-")))
    ):
        return None
    table = np.empty((chars.shape[1], len(fields)))
    for i, match in enumerate(fields):
        mantissa = _decimal(chars, [match.start(2), *range(match.start(3), match.end(3))])
        power = _decimal(chars, range(match.start(5), match.end(5)))
        power = np.where(signs[i] == ord("-"), -power, power) - (match.end(3) - match.start(3))
        if np.any(np.abs(power) > 22):
            return None
        scale = _POW10[np.abs(power)]
        table[:, i] = np.where(power >= 0, mantissa * scale, mantissa / scale)
    return table


def _decimal(chars: np.ndarray, positions) -> np.ndarray:
    """The integers written by the ASCII digits at ``positions`` of every column of ``chars``."""
    value = np.zeros(chars.shape[1], dtype=np.int64)
    offset = 0
    for p in positions:
        value = value * 10 + chars[p]
        offset = offset * 10 + ord("0")
    return value - offset


def _reason(exc: BaseException) -> str:
    """One line for an error (``OSError`` s without their repeated file name)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _read_wave_grid(path) -> np.ndarray:
    """The one-column wavelength-grid file of a ``resam`` grid (small; read at open)."""
    match = _WAVE_RE.fullmatch(os.path.basename(os.fspath(path)))
    rows = 2 * _RESAM_ROWS_PER_R * int(match["resolution"]) if match else UNKNOWN_ROWS
    try:
        raw = _read_bounded(path, rows)
        wave = np.loadtxt(io.BytesIO(raw), usecols=0, ndmin=1, dtype=np.float64)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        if isinstance(exc, TemplateError):
            raise
        raise TemplateError(
            f"cannot read the wavelength grid {path}: {_reason(exc)}; download it again"
        ) from exc
    if wave.size < 2 or not np.all(np.diff(wave) > 0):
        raise TemplateError(
            f"the wavelength grid {path} is not strictly increasing; download it again"
        )
    return wave


class _GridReader:
    """The dask task of :func:`open_bosz`: one grid node → ``4π·[H_λ, continuum]``.

    Called by :func:`dask.array.map_blocks` with the block index; looks the file
    up, reads it once and returns a ``(1, 1, 1, 1, 2, n)`` block (flux, then
    continuum).  Holes return NaN without touching the disk.  Picklable, so it
    runs on dask.distributed workers too.
    """

    def __init__(self, files, shape, *, ncols, nrows, start, stop, wave=None, wave_source=None):
        self.files = tuple(files)
        self.shape = tuple(shape)
        self.ncols, self.nrows, self.start, self.stop = ncols, nrows, start, stop
        self.wave = wave  # expected λ column (noresam only)
        self.wave_source = wave_source

    def __call__(self, block_id=None) -> np.ndarray:
        path = self.files[np.ravel_multi_index(block_id[: len(self.shape)], self.shape)]
        out = np.empty((1, 1, 1, 1, 2, self.stop - self.start))
        if path is None:
            out.fill(np.nan)
            return out
        table = read_bosz_table(
            path, ncols=self.ncols, nrows=self.nrows, start=self.start, stop=self.stop
        )
        if self.wave is not None and not np.allclose(table[:, 0], self.wave, rtol=1e-6, atol=0.0):
            raise TemplateError(
                f"the wavelength column of {path} differs from that of {self.wave_source}; "
                "open_bosz needs every noresam file of a grid on one wavelength grid: "
                "use the resam files of that resolution instead"
            )
        np.multiply(table[:, -2], _FOUR_PI, out=out[0, 0, 0, 0, 0])
        np.multiply(table[:, -1], _FOUR_PI, out=out[0, 0, 0, 0, 1])
        return out


# ---------------------------------------------------------------------------
# indexing a folder by file name
# ---------------------------------------------------------------------------


def _scan(root: Path) -> tuple[list[tuple[str, dict]], dict[int, list[tuple[int, str]]]]:
    """Every BOSZ spectrum and wavelength-grid file below ``root``, by name only."""
    spectra: list[tuple[str, dict]] = []
    waves: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    stack = [(os.fspath(root), 0)]
    seen: set[tuple[int, int]] = set()  # folders by (device, inode): a linked loop is read once
    while stack:
        folder, depth = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise TemplateError(
                f"cannot list the template folder {folder}: {_reason(exc)}; fix or remove it"
            ) from exc
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue  # temporary files of an interrupted download or write
            spectrum, wave = _NAME_RE.fullmatch(name), _WAVE_RE.fullmatch(name)
            try:
                is_dir = entry.is_dir()
                if (spectrum or wave) and not is_dir and not entry.is_file():
                    raise _not_regular(entry.path, entry.stat().st_mode)
            except OSError as exc:  # a symbolic-link loop, a link to nowhere, no permission
                raise TemplateError(
                    f"cannot use {entry.path} in the template folder: {_reason(exc)} (a "
                    "symbolic-link loop or a broken link?); remove or fix it"
                ) from exc
            if is_dir:
                if depth < _SCAN_DEPTH:
                    stack.append((entry.path, depth + 1))
            elif spectrum:
                spectra.append((entry.path, _params_from_match(spectrum)))
            elif wave:
                waves[int(wave["resolution"])].append((depth, entry.path))
    return spectra, waves


def _find_wave_grid(root: Path, resolution: int, waves: dict) -> str | None:
    """The wavelength grid of R: inside the scanned tree, else beside or above ``root``."""
    if waves.get(resolution):
        return min(waves[resolution])[1]
    name = wave_grid_name(resolution)
    for folder in (root.parent, root.parent.parent):
        for candidate in (folder / "wavelength_grids" / name, folder / name):
            if candidate.is_file():
                return os.fspath(candidate)
    return None


def _choices(values) -> str:
    return ", ".join(str(v) for v in sorted(set(values), key=lambda v: (isinstance(v, str), v)))


def _atmosphere_order(atmosphere, teff: float) -> tuple[str, ...]:
    """Preference order of atmosphere codes at one Teff."""
    if atmosphere is None:
        return (*_MARCS, *_ATLAS) if teff <= 8000 else (*_ATLAS, *_MARCS)
    aliases = {
        "marcs": _MARCS,
        "atlas": _ATLAS,
        "atlas9": _ATLAS,
        **{c: (c,) for c in _MARCS + _ATLAS},
    }
    codes = [atmosphere] if isinstance(atmosphere, str) else list(atmosphere)
    unknown = [c for c in codes if str(c).lower() not in aliases]
    if unknown:
        raise ValueError(
            f"atmosphere={atmosphere!r}: unknown code(s) {unknown}; use 'ap', 'mp', 'ms', "
            "'marcs' or 'atlas9' (or a list of them, in order of preference)"
        )
    order = [c for code in codes for c in aliases[str(code).lower()]]
    return (*order, *_atmosphere_order(None, teff))


def _select(root: Path, spectra, waves, *, resolution, carbon, vturb, atmosphere):
    """Keep one regular grid: one R, one kind, one [C/M], one vturb, one atmosphere per node."""
    _atmosphere_order(atmosphere, 0.0)  # validate before any work
    if not spectra:
        raise TemplateError(
            f"no BOSZ 2024 spectrum (bosz2024_*_resam.txt.gz or *_noresam.txt.gz) in {root} "
            f"or {_SCAN_DEPTH} levels of sub-folders; point open_bosz at the folder holding "
            "r{R}/m{[M/H]}/ (or the files themselves)"
        )
    found = {p["resolution"] for _, p in spectra}
    if resolution is not None and resolution != "orig":
        resolution = _integer("resolution", resolution)
    if resolution is None:
        if len(found) > 1:
            raise TemplateError(
                f"{root} holds BOSZ grids of several resolutions ({_choices(found)}): "
                "choose one with resolution="
            )
        (resolution,) = found
    elif resolution not in found:
        raise TemplateError(
            f"{root} has no BOSZ spectrum at resolution R={resolution}; it holds R = {_choices(found)}"
        )
    spectra = [(f, p) for f, p in spectra if p["resolution"] == resolution]

    wave_file = None if resolution == "orig" else _find_wave_grid(root, resolution, waves)
    kinds = {p["resampled"] for _, p in spectra}
    resampled = True in kinds and (wave_file is not None or False not in kinds)
    if resampled and wave_file is None:
        raise TemplateError(
            f"the resam files of R={resolution} in {root} need their wavelength grid "
            f"{wave_grid_name(resolution)}: put it in {root / 'wavelength_grids'} "
            "(archive layout) or beside the files"
        )
    spectra = [(f, p) for f, p in spectra if p["resampled"] == resampled]

    keep = [(f, p) for f, p in spectra if abs(p["carbon"] - carbon) < 1e-6]
    if not keep:
        raise TemplateError(
            f"{root} has no R={resolution} spectrum with [C/M]={carbon:+.2f}; "
            f"available: carbon= {_choices(p['carbon'] for _, p in spectra)}"
        )
    spectra = keep
    counts = collections.Counter(p["vturb"] for _, p in spectra)
    if vturb is None:
        vturb = min(counts, key=lambda v: (-counts[v], v))  # the most common, then the smallest
    elif vturb not in counts:
        raise TemplateError(
            f"{root} has no R={resolution} spectrum with vturb={vturb}; available: vturb= {_choices(counts)}"
        )
    spectra = [(f, p) for f, p in spectra if p["vturb"] == vturb]

    nodes: dict[tuple, list[tuple[str, dict]]] = collections.defaultdict(list)
    for f, p in spectra:
        nodes[(float(p["teff"]), p["logg"], p["mh"], p["alpha"])].append((f, p))
    chosen = {}
    for node, candidates in nodes.items():
        order = _atmosphere_order(atmosphere, node[0])
        rank = {code: i for i, code in reversed(list(enumerate(order)))}  # first mention wins
        chosen[node] = min(
            candidates, key=lambda fp: (rank.get(fp[1]["atm"], len(rank)), fp[1]["atm"], fp[0])
        )
    selection = {"resolution": resolution, "resampled": resampled, "carbon": carbon, "vturb": vturb}
    return chosen, wave_file, selection


def _grid_id(files: Sequence[str], extra: str) -> str:
    """Stable identity of a grid: sorted file names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in sorted(files, key=os.path.basename):
        st = os.stat(path)
        digest.update(f"{os.path.basename(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    digest.update(extra.encode())
    return digest.hexdigest()[:16]


def _derived_id(grid_id: str, what: str) -> str:
    return hashlib.sha256(f"{grid_id}\0{what}".encode()).hexdigest()[:16]


def _trim(wave: np.ndarray, wave_range, source) -> tuple[int, int]:
    """Index slice of ``wave`` inside ``wave_range`` (inclusive)."""
    if wave_range is None:
        return 0, wave.size
    try:
        lo, hi = (float(v) for v in wave_range)
    except (TypeError, ValueError):
        raise TypeError(
            f"wave_range must be a pair of numbers (Angstrom), got {wave_range!r}"
        ) from None
    if not lo < hi:
        raise ValueError(f"wave_range must be (low, high) with low < high, got {wave_range!r}")
    start, stop = int(np.searchsorted(wave, lo, "left")), int(np.searchsorted(wave, hi, "right"))
    if stop - start < 2:
        raise TemplateError(
            f"wave_range={wave_range!r} keeps fewer than 2 wavelengths of {source}, "
            f"which covers {wave[0]:.1f}–{wave[-1]:.1f} Å"
        )
    return start, stop


# ---------------------------------------------------------------------------
# the lazy grid
# ---------------------------------------------------------------------------


def _param_coords(axes: dict) -> dict:
    meta = {
        "teff": ("K", "effective temperature"),
        "logg": ("dex", "log10 surface gravity (cm/s2)"),
        "mh": ("dex", "metallicity [M/H]"),
        "alpha": ("dex", "alpha-element enhancement [alpha/M]"),
    }
    return {d: (d, axes[d], {"units": meta[d][0], "long_name": meta[d][1]}) for d in PARAM_DIMS}


def _wave_coord(wave: np.ndarray) -> tuple:
    return ("wavelength", wave, {"units": "Angstrom", "long_name": "vacuum wavelength"})


def _flux_attrs() -> dict:
    return {"units": _FLUX_UNITS, "long_name": "surface flux F_lambda = 4 pi H_lambda"}


def _continuum_attrs() -> dict:
    return {"units": _FLUX_UNITS, "long_name": "continuum surface flux 4 pi H_lambda,continuum"}


def open_grid(
    path,
    *,
    resolution: int | str | None = None,
    wave_range: tuple[float, float] | None = None,
    carbon: float = 0.0,
    vturb: int | None = None,
    atmosphere: str | Sequence[str] | None = None,
) -> xr.DataArray:
    """Open a BOSZ 2024 grid lazily: a dask-backed surface flux, one chunk per file.

    Parameters
    ----------
    path : str or path-like
        A folder of BOSZ files — the archive layout (``r{R}/m{[M/H]}/`` plus
        ``wavelength_grids/bosz2024_wave_r{R}.txt``), any sub-folder of it, or a
        flat folder with the wavelength grid beside the files — or a netCDF cube
        written by :func:`pack_bosz`.  (:func:`kspec_xr.open_bosz` without a
        path opens the bundled stand-in grid.)
    resolution : int or "orig", optional
        Resolving power R; required when the folder holds several.
    wave_range : (float, float), optional
        Keep only ``low ≤ λ ≤ high`` (Å).  The trim happens inside each read,
        so only that slice is ever held in memory.
    carbon : float, default 0.0
        [C/M] of the files to use.
    vturb : int, optional
        Microturbulence (km/s) of the files to use; default the most common.
    atmosphere : str or sequence of str, optional
        Where a node has several model atmospheres (BOSZ has both MARCS and
        ATLAS9 at 7500–8000 K): the codes to prefer, in order (``"ap"``,
        ``"mp"``, ``"ms"``, or ``"marcs"``/``"atlas9"``).  Default: MARCS at and
        below 8000 K, ATLAS9 above.  Nodes without a preferred code keep the
        default choice.  The choice is recorded in the ``atm`` coordinate.

    Returns
    -------
    xarray.DataArray
        ``flux`` (erg/s/cm²/Å, float64; float32 from a packed cube), dims
        ``(teff, logg, mh, alpha, wavelength)``, chunked 1 along every
        parameter and whole along ``wavelength``.  Coordinates: the parameters,
        ``wavelength`` (vacuum Å), ``atm`` and ``filename`` per node (``""`` in
        holes) and ``continuum`` (lazy, same dims and units).  Attributes:
        ``units``, ``long_name``, ``resolution``, ``grid_id``, ``source``,
        ``carbon``, ``vturb``, ``bosz_kind``, ``wavelength_grid``, ``library``.

    Raises
    ------
    TemplateError
        At open for an unusable folder (no files, several R and no
        ``resolution=``, missing wavelength grid, no file with the asked
        ``carbon``/``vturb``); at compute for a corrupt, truncated or
        wrong-shape file, naming it.

    Notes
    -----
    Opening reads **no spectrum**: the grid is indexed from file names alone
    (``os.scandir``, three levels deep).  The only file read at open is the
    small wavelength-grid file of a ``resam`` grid or, for a folder of
    ``noresam`` files only, the whole of *one* file (the first by name) whose
    λ column defines the grid; every other noresam file's λ column is checked
    against it when read.

    Each file is one dask task (a single :func:`dask.array.map_blocks` whose
    blocks look their file up by block index), which returns flux and
    continuum together: computing both (e.g. ``grid.compute()``, which
    computes the ``continuum`` coordinate with the data) reads every file once.
    Nodes without a file are NaN and never touch the disk.

    ``grid_id`` hashes the sorted names, sizes and modification times of the
    files used, with the wavelength slice: it changes when a file changes or
    another trim is asked for, and serves as a cache key.

    Examples
    --------
    >>> grid = open_bosz(wave_range=(3500, 9500))                  # doctest: +SKIP
    >>> grid.sel(teff=5750, logg=4.5, mh=0.0, alpha=0.0).compute()  # doctest: +SKIP
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:  # e.g. a symbolic-link loop
        raise TemplateError(
            f"cannot use the template grid {path}: {_reason(exc)}; check the path (templates=)"
        ) from exc
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise TemplateError(
            f"the template grid {path} is {_file_kind(mode)}: give a BOSZ folder or a cube "
            "written by pack_bosz (.nc)"
        )
    if path.is_file():
        if path.suffix.lower() in _PACKED_SUFFIXES:
            return _open_packed(
                path,
                resolution=resolution,
                wave_range=wave_range,
                carbon=carbon,
                vturb=vturb,
                atmosphere=atmosphere,
            )
        raise TemplateError(
            f"{path} is a file: open_bosz takes the folder of a BOSZ grid or a cube written by pack_bosz (.nc)"
        )
    if not path.is_dir():
        raise TemplateError(f"the template grid {path} does not exist; check the path (templates=)")

    spectra, waves = _scan(path)
    key = (os.fspath(path), repr((resolution, wave_range, carbon, vturb, atmosphere)))
    reused = _OPENED.get(key, path, spectra, waves)
    if reused is not None:
        return reused
    chosen, wave_file, sel = _select(
        path,
        spectra,
        waves,
        resolution=resolution,
        carbon=carbon,
        vturb=vturb,
        atmosphere=atmosphere,
    )
    nodes = sorted(chosen)
    axes = {d: np.unique([n[i] for n in nodes]) for i, d in enumerate(PARAM_DIMS)}
    shape = tuple(a.size for a in axes.values())
    files: list[str | None] = [None] * int(np.prod(shape))
    atm = np.full(shape, "", dtype=object)
    filename = np.full(shape, "", dtype=object)
    for node in nodes:
        f, p = chosen[node]
        index = tuple(int(np.searchsorted(axes[d], node[i])) for i, d in enumerate(PARAM_DIMS))
        files[int(np.ravel_multi_index(index, shape))] = f
        atm[index], filename[index] = p["atm"], os.path.basename(f)
    # what the grid is made from, as it is before any of it is read
    state = _OPENED.state(
        path, [f for f in files if f is not None] + ([wave_file] if wave_file else [])
    )

    if sel["resampled"]:
        wave, ncols, expect, reference = _read_wave_grid(wave_file), 2, None, None
        source = wave_file
    else:  # noresam only: the λ column of one file defines the grid
        reference = min((f for f in files if f is not None), key=os.path.basename)
        wave, ncols, source = read_bosz_table(reference, ncols=3)[:, 0], 3, reference
    start, stop = _trim(wave, wave_range, source)
    if not sel["resampled"]:
        expect = wave[start:stop]
    used = [f for f in files if f is not None] + ([wave_file] if wave_file else [])
    grid_id = _grid_id(used, f"{'resam' if sel['resampled'] else 'noresam'} rows {start}:{stop}")

    reader = _GridReader(
        files,
        shape,
        ncols=ncols,
        nrows=wave.size,
        start=start,
        stop=stop,
        wave=expect,
        wave_source=source,
    )
    both = da.map_blocks(
        reader,
        chunks=(*((1,) * n for n in shape), (2,), (stop - start,)),
        dtype=np.float64,
        meta=np.empty((0,) * 6, dtype=np.float64),
        name=f"bosz-read-{grid_id}",
    )
    coords = {
        **_param_coords(axes),
        "wavelength": _wave_coord(wave[start:stop]),
        "atm": (PARAM_DIMS, atm.astype(str)),
        "filename": (PARAM_DIMS, filename.astype(str)),
        "continuum": (_DIMS, both[..., 1, :], _continuum_attrs()),
    }
    attrs = {
        **_flux_attrs(),
        "resolution": sel["resolution"],
        "grid_id": grid_id,
        "source": os.fspath(path),
        "carbon": sel["carbon"],
        "vturb": sel["vturb"],
        "bosz_kind": "resam" if sel["resampled"] else "noresam",
        "wavelength_grid": os.fspath(source),
        "library": (
            "kspec_xr stand-in grid in the BOSZ 2024 format"
            if any((folder / STANDIN_MARKER).is_file() for folder in (path, *path.parents[:2]))
            else "BOSZ 2024 (Meszaros et al. 2024, A&A 688, A197)"
        ),
    }
    grid = xr.DataArray(both[..., 0, :], dims=_DIMS, coords=coords, name="flux", attrs=attrs)
    _OPENED.put(key, (spectra, dict(waves), tuple(used), wave_file, sel["resolution"]), state, grid)
    return grid.copy(deep=False)


class _OpenedGrids:
    """The last folder grids :func:`open_grid` built in this process, reused while unchanged.

    A grid is handed out again (a shallow copy: its own attributes) only if
    the folder scans to the same files, every file it was made from (the
    spectra, the wavelength grid) keeps its device, inode, size, mtime and ctime --
    any write to a file changes its ctime -- the wavelength grid is still
    the one that would be found and the stand-in marker says the same; its
    ``grid_id`` and its reads are then those a new open would give.
    Opening a 572-file grid again costs the scan and the stats (~5 ms)
    instead of ~15-40 ms.
    """

    def __init__(self, kept: int = 4):
        self._kept = kept
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict = collections.OrderedDict()

    @staticmethod
    def state(path: Path, used) -> tuple | None:
        """The stamps of the files ``used`` and whether ``path`` is the stand-in grid."""
        try:
            stamps = []
            for f in used:
                st = os.stat(f)
                stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            return None
        marker = any((folder / STANDIN_MARKER).is_file() for folder in (path, *path.parents[:2]))
        return tuple(stamps), marker

    def get(self, key, path: Path, spectra, waves) -> xr.DataArray | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        made_from, state, grid = entry
        used, wave_file, resolution = made_from[2:]
        if (spectra, waves) != made_from[:2]:
            return None
        if resolution != "orig" and _find_wave_grid(path, resolution, waves) != wave_file:
            return None
        if self.state(path, used) != state:
            return None
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        return grid.copy(deep=False)

    def put(self, key, made_from: tuple, state: tuple | None, grid: xr.DataArray) -> None:
        if state is None:
            return
        with self._lock:
            self._entries[key] = (made_from, state, grid)
            self._entries.move_to_end(key)
            while len(self._entries) > self._kept:
                self._entries.popitem(last=False)


_OPENED = _OpenedGrids()


# ---------------------------------------------------------------------------
# packed netCDF cubes
# ---------------------------------------------------------------------------


def _packed_damaged(path, exc: BaseException) -> TemplateError:
    return TemplateError(
        f"cannot read the packed template cube {path} ({type(exc).__name__}: {_reason(exc)}): "
        "it is damaged or truncated; pack it again with pack_bosz (overwrite=True)"
    )


class _PackedArray:
    """A variable of a packed cube for :func:`dask.array.from_array`: a failed read of a
    damaged file (netCDF4's ``NetCDF: HDF error``) becomes a :class:`TemplateError`
    naming it.  Picklable (xarray's lazy file array is), for distributed workers."""

    def __init__(self, variable: xr.Variable, path):
        self.variable, self.path = variable, os.fspath(path)
        self.shape, self.dtype, self.ndim = variable.shape, variable.dtype, variable.ndim

    def __getitem__(self, key) -> np.ndarray:
        try:
            return np.asarray(self.variable[key].values)
        except (OSError, RuntimeError) as exc:
            raise _packed_damaged(self.path, exc) from exc


def _packed_dask(ds: xr.Dataset, name: str, path: Path, grid_id: str) -> da.Array:
    var = ds[name].variable
    chunks = tuple(1 if d in PARAM_DIMS else n for d, n in zip(var.dims, var.shape, strict=True))
    st = os.stat(path)
    token = hashlib.sha256(
        f"{os.fspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{grid_id}".encode()
    ).hexdigest()[:16]
    return da.from_array(
        _PackedArray(var, path),
        chunks=chunks,
        name=f"bosz-packed-{name}-{token}",
        meta=np.empty((0,) * var.ndim, dtype=var.dtype),
    )


def _open_packed(path: Path, *, resolution, wave_range, carbon, vturb, atmosphere) -> xr.DataArray:
    """Open a cube written by :func:`pack_bosz` with the layout of :func:`open_bosz`."""
    try:
        ds = xr.open_dataset(path, engine="netcdf4", cache=False)  # lazy; no dask yet
    except (OSError, ValueError, RuntimeError) as exc:
        raise TemplateError(
            f"cannot open the packed template cube {path}: {_reason(exc)}; pack it again with "
            "pack_bosz"
        ) from exc
    try:
        return _packed_grid(
            ds,
            path,
            resolution=resolution,
            wave_range=wave_range,
            carbon=carbon,
            vturb=vturb,
            atmosphere=atmosphere,
        )
    except (OSError, RuntimeError) as exc:  # the coordinates are read now
        raise _packed_damaged(path, exc) from exc


def _packed_grid(ds, path, *, resolution, wave_range, carbon, vturb, atmosphere) -> xr.DataArray:
    missing = {"flux", "continuum", *_DIMS, "atm", "filename"} - set(ds.variables)
    if missing or ds["flux"].dims != _DIMS or "grid_id" not in ds.attrs:
        raise TemplateError(
            f"{path} is not a template cube written by pack_bosz (missing {sorted(missing) or 'its layout'}); "
            "pack it again with pack_bosz"
        )
    attrs = dict(ds.attrs)
    for key, asked, stored in (
        ("resolution", resolution, attrs.get("resolution")),
        ("vturb", vturb, attrs.get("vturb")),
        ("carbon", carbon, attrs.get("carbon")),
    ):
        if (
            asked is not None
            and stored is not None
            and str(asked) != str(stored)
            and asked != stored
        ):
            raise TemplateError(
                f"the packed cube {path} holds {key}={stored}, not {asked}; pack the grid you need"
            )
    if atmosphere is not None:
        raise TemplateError(
            f"atmosphere= chooses files in a BOSZ folder; the packed cube {path} already holds one "
            "atmosphere per node (coordinate atm): pack the folder again with the atmosphere you want"
        )
    wave = ds["wavelength"].values
    start, stop = _trim(wave, wave_range, path)
    if (start, stop) != (0, wave.size):
        ds = ds.isel(wavelength=slice(start, stop))
        attrs["grid_id"] = _derived_id(attrs["grid_id"], f"rows {start}:{stop}")
    attrs["source"] = os.fspath(path)
    # only flux and continuum become dask arrays (one chunk per node, each read
    # through _PackedArray); the small per-node labels are read now
    coords: dict[str, object] = {d: ds[d].variable for d in _DIMS}
    coords["atm"] = (PARAM_DIMS, ds["atm"].values.astype(str))
    coords["filename"] = (PARAM_DIMS, ds["filename"].values.astype(str))
    continuum = _packed_dask(ds, "continuum", path, attrs["grid_id"])
    coords["continuum"] = (_DIMS, continuum, _continuum_attrs())
    return xr.DataArray(
        _packed_dask(ds, "flux", path, attrs["grid_id"]),
        dims=_DIMS,
        coords=coords,
        name="flux",
        attrs={**attrs, **_flux_attrs()},
    )


def pack_bosz(
    src,
    dst,
    *,
    resolution: int | str | None = None,
    wave_range: tuple[float, float] | None = None,
    overwrite: bool = False,
    carbon: float = 0.0,
    vturb: int | None = None,
    atmosphere: str | Sequence[str] | None = None,
) -> Path:
    """Pack a BOSZ grid into one trimmed, float32, zlib-compressed netCDF cube.

    Parameters
    ----------
    src : str or path-like
        Anything :func:`open_bosz` opens (a BOSZ folder or another cube).
    dst : str or path-like
        Output file, or an existing folder to write ``bosz2024_r{R}_{lo}-{hi}A.nc`` into.
    resolution, wave_range, carbon, vturb, atmosphere
        Passed to :func:`open_bosz`.
    overwrite : bool, default False
        Replace an existing ``dst``.

    Returns
    -------
    pathlib.Path
        The cube; ``open_bosz(path)`` opens it lazily (one chunk per node)
        with the same layout, values equal to float32 precision.

    Raises
    ------
    OutputExistsError
        If ``dst`` exists and ``overwrite`` is false.
    TemplateError
        From :func:`open_bosz`, or for a file that cannot be read while packing.

    Notes
    -----
    The cube's ``grid_id`` is new — a hash of the source's ``grid_id`` and
    the float32 packing — so caches built from the text grid and from the
    cube are told apart, while packing the same source twice gives the same
    id.  The source's id is kept as ``source_grid_id``.  Files are read once
    each (flux and continuum together), streamed block by block; the cube is
    written to a temporary file and renamed.
    """
    grid = open_grid(
        src,
        resolution=resolution,
        wave_range=wave_range,
        carbon=carbon,
        vturb=vturb,
        atmosphere=atmosphere,
    )
    dst = Path(dst)
    if dst.is_dir():
        w = grid["wavelength"].values
        dst = dst / f"bosz2024_r{grid.attrs['resolution']}_{w[0]:.0f}-{w[-1]:.0f}A.nc"
    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst} exists; pass overwrite=True to replace it")
    attrs = {
        **grid.attrs,
        "grid_id": _derived_id(grid.attrs["grid_id"], "packed float32"),
        "source_grid_id": grid.attrs["grid_id"],
        "packed_from": grid.attrs["source"],
    }
    attrs.pop("source")
    ds = xr.Dataset(
        {
            "flux": (_DIMS, grid.data.astype(np.float32), _flux_attrs()),
            "continuum": (_DIMS, grid["continuum"].data.astype(np.float32), _continuum_attrs()),
        },
        coords={k: v.variable for k, v in grid.coords.items() if k != "continuum"},
        attrs=attrs,
    )
    chunks = (*(1 for _ in PARAM_DIMS), grid.sizes["wavelength"])
    encoding = {
        v: {
            "zlib": True,
            "complevel": 4,
            "shuffle": True,
            "chunksizes": chunks,
            "_FillValue": np.float32(np.nan),
        }
        for v in ("flux", "continuum")
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dst, overwrite=overwrite) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    return dst
