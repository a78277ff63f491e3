"""Where kspec_xr keeps its bundled data and its cache, and how it writes a file.

:func:`atomic_output` is the one way every writer of the package makes a file
that is either complete or absent: a temporary file beside it, then a rename.
:func:`sweep_stale_temps` removes the temporary files of writers that were
killed, and only those.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from .errors import OutputError, OutputExistsError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the callers go on unguarded
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "data_path",
    "cache_dir",
    "atomic_output",
    "sweep_stale_temps",
    "same_file",
    "check_writable",
    "waiting_lock",
]

#: a temporary file older than this (seconds) is stale whoever made it
STALE_AFTER = 86400.0
#: what follows ``.{name}.`` in a temporary file's name: ``{pid}-{host}.{random}``
#: (``{random}`` alone in files of kspec_xr versions before the owner was named)
_TEMP_TAIL = re.compile(r"(?:(\d+)-([0-9a-f]{8})\.)?([a-z0-9_]+)\.tmp")


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


def _host_tag() -> str:
    """8 hex digits naming this machine (a pid means something only on its own host)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(path: Path, pid: int | None = None) -> str:
    """The start of the names of ``path``'s temporary files made by process ``pid`` (this one)."""
    return f".{path.name}.{os.getpid() if pid is None else pid}-{_host_tag()}."


def _process_gone(pid: int) -> bool:
    """True if no process ``pid`` runs on this machine (False when it cannot be told)."""
    if pid <= 0:
        return True
    if pid == os.getpid() or os.name == "nt":  # Windows: os.kill(pid, 0) is CTRL_C_EVENT
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none such (or none can be)
        return True
    except OSError:  # PermissionError: it runs, as another user
        return False
    return False


def sweep_stale_temps(path, *, max_age: float = STALE_AFTER) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left; return them.

    A temporary file of ``path`` (made by :func:`atomic_output`) is
    ``.{name}.{pid}-{host}.{random}.tmp`` beside it.  It is removed when the
    process that made it is gone (``os.kill(pid, 0)`` finds no such process
    on this machine) or when it is older than ``max_age`` seconds (a day);
    one of a process still running -- a concurrent run writing the same
    output, or one on another machine of a shared file system -- is left
    alone.  Names are compared as strings, never as glob patterns, so a
    ``[``, ``*`` or ``?`` in the name matches only itself, and the
    temporary files of other outputs (``name.gz``, ``name.1``) are never
    touched.  Files of older kspec_xr versions (``.{name}.{random}.tmp``,
    no owner) go when older than ``max_age``.
    """
    path = Path(path)
    folder = path.parent
    prefix, host = f".{path.name}.", _host_tag()
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    now, removed = time.time(), []
    for entry in entries:
        match = _TEMP_TAIL.fullmatch(entry[len(prefix) :]) if entry.startswith(prefix) else None
        if match is None:
            continue
        candidate = folder / entry
        try:
            info = candidate.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        pid, owner_host = match.group(1), match.group(2)
        gone = pid is not None and owner_host == host and _process_gone(int(pid))
        if gone or now - info.st_mtime > max_age:
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_output(path, *, overwrite: bool = True):
    """Yield a temporary path beside ``path``; rename it into place when the block succeeds.

    The temporary file (``.{name}.{pid}-{host}.XXXX.tmp`` in the same folder,
    so the rename is atomic; the owner in its name lets
    :func:`sweep_stale_temps` tell a killed writer's file from a live one's)
    is removed if the block raises.  Stale temporary files of ``path`` are
    swept first.  With ``overwrite=False`` an existing ``path`` is never
    replaced, even one created while writing: ``OutputExistsError``.  The
    file gets the permissions of the file it replaces, or the usual ones for
    a new file.
    """
    path = Path(path)
    sweep_stale_temps(path)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
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


def check_writable(path, *, needed: int = 0) -> None:
    """Refuse, before any work, an output that could not be written beside ``path``.

    The folder must exist and take a new file (tried for real: a temporary
    file is created and removed, which also catches read-only file systems
    and root on a read-only mount), and have ``needed`` bytes free.

    Raises
    ------
    OutputError
        Naming the path and what to do.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(
            f"cannot write {path}: the folder {folder} does not exist; create it first"
        )
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.probe.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise OutputError(
            f"cannot write {path}: the folder {folder} does not take new files "
            f"({err.strerror or err}); choose another output folder"
        ) from None
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OutputError(
            f"cannot write {path}: {free / 1e6:.0f} MB free in {folder}, about "
            f"{needed / 1e6:.0f} MB needed; free some space or choose another folder"
        )


@contextlib.contextmanager
def waiting_lock(path, *, timeout: float, on_wait=None):
    """Hold an exclusive ``flock`` on ``path`` (created) for the block; yield whether it is held.

    Waits up to ``timeout`` seconds for another holder (a process or thread
    doing the same work), calling ``on_wait()`` once if it has to wait.
    Yields False, and the caller goes on unguarded, when no lock can be had:
    a folder that takes no file, a file system without locks, or a holder
    that does not finish in time.  The file's mtime is refreshed when the
    lock is taken, so that a sweep of old lock files leaves it alone.
    """
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - held for the lock's life
    except OSError:
        yield False
        return
    held = False
    try:
        if fcntl is not None:
            deadline = time.monotonic() + timeout
            waited = False
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    if not waited and on_wait is not None:
                        on_wait()
                    waited = True
                    time.sleep(0.05)
                except OSError:  # pragma: no cover - no locks on this file system
                    break
        if held:
            with contextlib.suppress(OSError):
                os.utime(path)
        yield held
    finally:
        handle.close()  # (releases the lock)
