"""One run per folder at a time, and output locations checked before any work.

:func:`check_output` tells, before anything is computed, whether a folder
(or a file) can be written: the path is not the wrong kind (a file where a
folder is wanted, or the reverse), its nearest existing parent is a folder,
and a file can really be created there (tried, not guessed from permission
bits, which root ignores). It raises one :class:`OutputError` naming the path.

:func:`folder_lock` holds an exclusive lock on a run folder for the time of a
run: ``FOLDER/.hallnll.lock``, locked with ``fcntl.flock`` and holding the
holder's host, PID, command and start time. A second process that asks for the
same folder gets one :class:`FolderBusy` at once naming the holder. The kernel
releases a flock when its process dies (``kill -9`` included), so a lock file
left by a dead process is free: it is taken over, no stale-lock cleanup needed;
where the lock is held but its holder is a dead PID on this host (a file system
whose locks outlived the process), the message says so. The holder removes the
lock file when it is done; a process that locked a file just removed (it opened
it a moment before) sees that the path no longer names its file and tries
again, so two processes never hold two files of one folder. Within one process the lock
is re-entrant (``train --seeds`` holds OUT, each seed's ``fit`` its own
folder; ``jobs.execute`` holds a job's folder and ``fit`` inside it asks
again); a child process that a holder starts for the same folder (a notebook
kernel) finds it in ``HALLNLL_HELD_LOCKS`` and does not ask again. Where the
lock made the folder and the block fails with the folder still empty, the
folder is removed too: a refused run leaves nothing behind.

Without ``fcntl`` (Windows) runs are not locked.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

LOCK_NAME = ".hallnll.lock"
#: folders whose lock a parent process holds for its children (os.pathsep-separated, resolved paths)
HELD_ENV = "HALLNLL_HELD_LOCKS"

__all__ = ["OutputError", "FolderBusy", "check_output", "folder_lock", "holder", "LOCK_NAME", "HELD_ENV"]


class OutputError(ValueError):
    """An output location that cannot be written (reported as one ``error:`` line)."""


class FolderBusy(OutputError):
    """The run folder is locked by another process."""


def _existing_parent(p: Path) -> Path:
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def check_output(path, kind: str = "folder", what: str = "--out") -> Path:
    """``path`` as a Path once it is known that a ``kind`` ("folder" or "file") can be
    written there; else one :class:`OutputError` saying why and what to do. Writes nothing
    (a probe file is created in the nearest existing folder and removed at once)."""
    p = Path(path).expanduser()
    if kind == "folder" and p.exists() and not p.is_dir():
        raise OutputError(f"{what} {str(p)!r} is a file, not a folder; give a folder (new or a run folder)")
    if kind == "file" and p.is_dir():
        raise OutputError(f"{what} {str(p)!r} is a folder; give a file name such as {p / 'labels.csv'}")
    start = p if kind == "folder" else p.parent
    base = _existing_parent(start.absolute())
    if not base.is_dir():
        raise OutputError(f"{what} {str(p)!r} cannot be created: {str(base)!r} is a file, not a folder")
    if kind == "file" and p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{what} {str(p)!r} exists and is read-only; choose another file or make it writable")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".hallnll-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what} {str(p)!r} cannot be written: {str(base)!r} does not accept new files "
                          f"({e.strerror or e}); choose another {what} or make it writable") from None
    return p


def holder(folder) -> str:
    """What the lock file of ``folder`` says about its (last) holder."""
    try:
        return (Path(folder) / LOCK_NAME).read_text().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(text: str) -> str:
    fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
    host, pid = fields.get("host", "?"), fields.get("pid", "?")
    desc = f"process {pid} on {host}"
    if fields.get("started"):
        desc += f", since {fields['started']}"
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        desc += "; that process is gone but its lock is still held (a stale lock of the file system: delete " \
                f"{LOCK_NAME} once no run uses the folder)"
    return desc


_held: dict = {}  # resolved folder -> [fd, depth]


@contextlib.contextmanager
def folder_lock(folder, what: str = "--out", wait: float = 0.0):
    """Hold the run lock of ``folder`` (made if missing) inside the block; see the module
    docstring. ``wait`` seconds: how long to retry a busy lock before :class:`FolderBusy`."""
    folder = check_output(folder, "folder", what)
    key = str(folder.resolve())
    inherited = key in os.environ.get(HELD_ENV, "").split(os.pathsep)
    if fcntl is None or key in _held or inherited:
        if key in _held:
            _held[key][1] += 1
        try:
            yield folder
        finally:
            if key in _held:
                _held[key][1] -= 1
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder removed it as we locked it: take the folder's current file
            continue
        except BlockingIOError:
            if time.monotonic() < deadline:
                os.close(fd)
                time.sleep(0.05)
                continue
            os.close(fd)
            raise FolderBusy(f"{what} {str(folder)!r} is in use by another hallnll run ({_describe(holder(folder))}); "
                             f"wait for it to finish, or give another {what}") from None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"host={socket.gethostname()} pid={os.getpid()} started={stamp}\ncommand: {cmd}\n".encode(), 0)
    _held[key] = [fd, 1]
    failed = False
    try:
        yield folder
    except BaseException:
        failed = True
        raise
    finally:
        del _held[key]
        try:
            path.unlink()  # while still held (see the module docstring)
            if failed and created and not any(folder.iterdir()):
                folder.rmdir()
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock


@contextlib.contextmanager
def passed_to_children(folder):
    """Inside the block, child processes (a notebook's kernel) treat ``folder``'s lock,
    held here, as theirs (:data:`HELD_ENV`)."""
    key = str(Path(folder).resolve())
    before = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = os.pathsep.join([x for x in (before or "").split(os.pathsep) if x] + [key])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = before
