"""Where kspec_xr keeps its bundled data and its cache."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

__all__ = ["data_path", "cache_dir"]


def data_path(*parts: str) -> Path:
    """Path of a file bundled in ``kspec_xr.data`` (the project's ``data/`` folder)."""
    return Path(str(files("kspec_xr.data").joinpath(*parts)))


def cache_dir(*parts: str) -> Path:
    """A folder in the user cache (``$KSPEC_XR_CACHE`` or ``~/.cache/kspec_xr``), created."""
    root = os.environ.get("KSPEC_XR_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "kspec_xr"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
