"""Files written whole or not at all, and JSON-lines files appended a whole line at a time.

`atomic_write`: a temporary file beside the target, flushed to disk, renamed over it; a kill, a
full disk or a permission error mid-write leaves the target as it was (or absent) and no
temporary file behind, and the error is raised as `AtomicWriteError` naming the target.
Files get the usual permissions (0666 less the umask), not the temporary file's private 0600.
`atomic_folder`: a folder filled under a temporary name beside its target and renamed to it when
complete, so the target is either whole or absent; a killed build's temporary folder is removed
by the next build of the same target.
`append_lines`: a line torn by a killed writer is cut away before new lines are appended, so
the next line never lands on it (both would be lost).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

logger = logging.getLogger(__name__)


class AtomicWriteError(OSError):
    """A write that failed (disk full, permission denied, ...), naming the file; nothing partial is left
    (an append may leave a torn last line, which the next `append_lines` cuts)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(handle)` on a temporary file beside `path`, fsync, rename it over `path`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise AtomicWriteError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # mkstemp made it private
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # torch.save reports a full disk as a RuntimeError
            errno = getattr(exc, "errno", None)
            raise AtomicWriteError(errno, f"cannot write {target}: {getattr(exc, 'strerror', None) or exc}") from exc
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside `path`; when the block ends without an error it gets the
    usual permissions and is renamed to `path`, otherwise it is removed.  Temporary folders of
    earlier builds of `path` (killed runs) are removed first.  `path` must not exist."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
            logger.warning("removed %s, the unfinished build of a killed run", stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it private
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def drop_torn_tail(path: str | os.PathLike) -> int:
    """Cut a last line that lacks its newline (a write killed half-way); returns the bytes removed."""
    target = Path(path)
    if not target.is_file():
        return 0
    with target.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = size
        while keep > 0:  # scan back in blocks for the last newline
            start = max(0, keep - 65536)
            handle.seek(start)
            block = handle.read(keep - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            keep = start
        handle.truncate(keep)
        return size - keep


def append_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Append whole lines (each gets a newline) after cutting a torn last line; flushed to disk."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(target)
        with target.open("ab") as handle:
            handle.write("".join(line + "\n" for line in lines).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise AtomicWriteError(exc.errno, f"cannot append to {target}: {exc.strerror or exc}") from exc
