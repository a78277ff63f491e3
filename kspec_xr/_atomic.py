"""Write a file so that it is either complete or absent: a temporary file, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import OutputExistsError

__all__ = ["atomic_output"]


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
