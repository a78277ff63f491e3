"""Where kspec_xr keeps its bundled data and its cache, and how it writes a file.

:func:`atomic_output` is the one way every writer of the package makes a file
that is either complete or absent: a temporary file beside it, then a rename.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from importlib.resources import files
from pathlib import Path

from .errors import OutputExistsError

__all__ = ["data_path", "cache_dir", "atomic_output", "same_file"]


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path, *, overwrite: bool = True):
    """Yield a temporary path beside ``path``; rename it into place when the block succeeds.

    The temporary file (``.{name}.XXXX.tmp`` in the same folder, so the rename
    is atomic) is removed if the block raises.  With ``overwrite=False`` an
    existing ``path`` is never replaced, even one created while writing:
    ``OutputExistsError``.  The file gets the permissions of the file it
    replaces, or the usual ones for a new file.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic: fails if someone created path meanwhile
        except FileExistsError:
            raise OutputExistsError(
                f"{path} exists; pass overwrite=True (command line: --overwrite) to replace it"
            ) from None
        except OSError:  # no hard links on this file system
            os.replace(tmp, path)
        else:
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if two paths name one file (resolved paths, or the same inode)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False
