"""A cache folder that several processes share: built once under a lock, written so that
every file lands whole, and checked against the checksums recorded with it before it is read.

A folder holds the cached files and a marker, ``attnkit.json``, written last. The marker
records each file's size and SHA-256; a folder whose marker is missing, from an older format,
or does not match the files is rebuilt. Nothing in it is unpickled.

* Reading (:func:`load_or_build`) takes no lock: it checks the marker and the sizes, then
  hashes the files in a thread while ``read`` does what can go first (for a model, reading
  its tokenizer). ``read`` calls ``verified()`` before it reads the bulk of the files, and
  the verdict is checked again before anything is returned: nothing read from a folder that
  fails its checksums is ever handed out.
* Building takes an exclusive lock on ``<folder>.lock`` beside the folder (``fcntl.flock`` on
  POSIX, released by the OS if the process dies; the ``filelock`` package elsewhere). A
  process that waits for the lock finds the folder built and reads it instead of building it
  again. The files are written into a staging folder inside the folder, then moved in with
  :func:`os.replace` one by one, the old marker removed first and the new one written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "FORMAT",
    "MARKER",
    "NOT_BUILT",
    "CacheReadError",
    "check",
    "digest",
    "load_or_build",
    "locked",
    "publish",
    "staging",
]

logger = logging.getLogger("attnkit.models")

T = TypeVar("T")

#: The marker file, written last.
MARKER = "attnkit.json"
#: Layout of the marker: 2 records ``files`` (size and SHA-256 of each); 1 recorded none.
FORMAT = 2
#: What :func:`check` says about a folder without a marker (nothing to warn about).
NOT_BUILT = "not built yet"
_STAGING = ".staging-"
_CHUNK = 1 << 22


class CacheReadError(RuntimeError):
    """A cache folder whose files match their checksums could not be read."""


class _Mismatch(Exception):
    pass


def digest(path: Path) -> str:
    """SHA-256 of a file, as hex (what ``sha256sum`` prints)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder)))
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": digest(p)} for p in files}


def _hidden(rel: Path) -> bool:
    return rel.as_posix() == MARKER or any(part.startswith(".") for part in rel.parts)


def _read_marker(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    marker = folder / MARKER
    try:
        data = json.loads(marker.read_text())
    except FileNotFoundError:
        return None, NOT_BUILT
    except (OSError, ValueError) as exc:
        return None, f"its marker {MARKER} does not read ({exc})"
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        return None, f"its marker {MARKER} records no checksums (written by an older attnkit)"
    return data, None


def check(folder: Path, *, full: bool = True) -> str | None:
    """Why the cache folder cannot be read as it is, or ``None`` when it can.

    :param full: hash every file (SHA-256) besides checking the marker and the sizes.
    """
    data, reason = _read_marker(folder)
    if data is None:
        return reason
    files: dict[str, dict[str, Any]] = data["files"]
    for rel, want in files.items():
        path = folder / rel
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != want.get("size"):
            return f"{rel} has {size} bytes, {want.get('size')} were written (truncated or replaced)"
    if full:
        for rel, want in files.items():
            try:
                got = digest(folder / rel)
            except OSError as exc:
                return f"{rel} does not read ({exc})"
            if got != want.get("sha256"):
                return f"the SHA-256 of {rel} differs from the one recorded when it was written (overwritten)"
    return None


@contextlib.contextmanager
def locked(folder: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock ``<folder>.lock`` (beside the folder, created with its parent).

    :param on_wait: called once when another process holds the lock, before waiting for it.
    :raises OSError: the lock file cannot be created (a read-only cache folder).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f"{folder.name}.lock"
    try:
        import fcntl
    except ImportError:  # not POSIX: filelock (a dependency of torch) does it portably
        from filelock import FileLock, Timeout

        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o666))  # unwritable: raise now, not spin
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def staging(folder: Path) -> Iterator[Path]:
    """A fresh, empty folder inside ``folder`` (same file system, so :func:`publish` only
    renames), removed on exit whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=_STAGING, dir=folder))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, folder: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Move the files written into ``stage`` into ``folder`` and write the marker last, with
    each file's size and SHA-256 and ``meta``. Call it holding :func:`locked`.

    :returns: the marker's content.
    """
    files = _manifest(stage)
    marker = folder / MARKER
    marker.unlink(missing_ok=True)  # a crash from here on leaves a folder that is rebuilt
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, folder / rel)
    data = {**(meta or {}), "format": FORMAT, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
    tmp = folder / f".{MARKER}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, marker)
    return data


def _clear_staging(folder: Path) -> None:
    # Under the lock, staging folders and temp markers belong to processes that died mid-build.
    if folder.is_dir():
        for p in folder.glob(".*"):
            if p.name.startswith(_STAGING) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(f".{MARKER}."):
                p.unlink(missing_ok=True)


_MISS = object()


def _try_read(folder: Path, read: Callable[[Path, Callable[[], None]], T]) -> tuple[Any, str | None]:
    """``read(folder, verified)``, or ``(_MISS, reason)`` when the folder does not verify."""
    reason = check(folder, full=False)
    if reason is not None:
        return _MISS, reason
    with ThreadPoolExecutor(1, thread_name_prefix="attnkit-verify") as pool:
        verdict = pool.submit(check, folder)

        def verified() -> None:
            found = verdict.result()
            if found is not None:
                raise _Mismatch(found)

        try:
            value = read(folder, verified)
            verified()  # in case ``read`` did not wait for it
        except _Mismatch as exc:
            return _MISS, str(exc)
        except Exception as exc:
            found = verdict.result()
            if found is not None:  # the files are damaged: that is why they did not read
                return _MISS, found
            raise CacheReadError(
                f"could not read the cache folder {folder}, although its files match the checksums "
                f"recorded in {MARKER}: {type(exc).__name__}: {exc}. Remove that folder to have it "
                "rebuilt, or load without the cache (use_cache_dir=False)"
            ) from exc
    return value, None


def load_or_build(
    folder: Path,
    *,
    read: Callable[[Path, Callable[[], None]], T],
    build: Callable[[], T],
    save: Callable[[T, Path], None],
    meta: dict[str, Any] | None = None,
    what: str = "cached files",
) -> T:
    """Read the cache folder, or build what it holds, save it there and return it.

    :param read: ``read(folder, verified)`` returns the value from the files. It calls
        ``verified()`` (which blocks until the hashes are checked and raises when they do not
        match) before it reads what must not be read unverified, such as weights; what it
        reads before overlaps the hashing, and is thrown away when the verdict is against it.
    :param build: makes the value from its source (the slow path).
    :param save: ``save(value, stage)`` writes the files into the empty folder ``stage``.
    :param meta: recorded in the marker next to the checksums.
    :param what: names the contents in warnings.
    :returns: what ``read`` or ``build`` returned. A folder that exists but does not verify is
        rebuilt with a warning that says why. When the folder cannot be locked or written the
        value is built and returned with a warning, without caching it.
    :raises CacheReadError: the files verify but ``read`` failed (names the folder and the fix).
    """
    value, reason = _try_read(folder, read)
    if value is not _MISS:
        return value

    def waiting() -> None:
        logger.info("attnkit: waiting for another process building %s (lock %s.lock)", folder, folder)

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked(folder, on_wait=waiting))
        except OSError as exc:  # a read-only cache must not stop the caller
            warnings.warn(f"attnkit: cannot lock {folder} to cache {what} there ({exc}); not caching", stacklevel=3)
            return build()
        reason = check(folder)
        if reason is None:  # built by the process that held the lock before us
            value, reason = _try_read(folder, read)
            if value is not _MISS:
                return value
        if reason != NOT_BUILT:
            warnings.warn(
                f"attnkit: the cache folder {folder} cannot be used: {reason}; rebuilding the {what}", stacklevel=3
            )
            with contextlib.suppress(OSError):  # dying mid-build then leaves an unbuilt folder
                (folder / MARKER).unlink(missing_ok=True)
        value = build()
        try:
            _clear_staging(folder)
            with staging(folder) as stage:
                save(value, stage)
                publish(stage, folder, meta)
        except OSError as exc:
            warnings.warn(f"attnkit: could not cache {what} in {folder}: {exc}", stacklevel=3)
        return value
    raise AssertionError("unreachable")  # pragma: no cover
