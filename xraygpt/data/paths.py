"""Confinement of the paths that data turns into (ids, image paths, shard members) to their root.

A path written in a data file (an R2Gen `image_path`, a MIMIC `dicom_id`, an OpenI
`parentImage` id) is joined to the folder the user named only when it cannot leave it: an
absolute path ("/etc/passwd", "C:\\x"), a `..` component, a NUL byte or an empty name is
refused with `UnsafePath`, and the callers count the entry as dropped with the reason rather
than follow it.  The check is lexical (on the path as written, "\\" read as "/"): it does not
resolve symbolic links, so a prepared folder whose `image/` holds links to the release's files
(`prepare --image-mode link`) still reads.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePath(ValueError):
    """A path from data that would leave its root (absolute, `..`, NUL, empty)."""


def confined(root: Path, relative: str) -> Path:
    """`root` / `relative`, or UnsafePath when `relative` could reach outside `root`."""
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise UnsafePath(f"unsafe path {relative!r}: empty or holds a NUL byte")
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or _DRIVE.match(relative):
        raise UnsafePath(f"unsafe path {relative!r}: absolute")
    if ".." in posix.parts:
        raise UnsafePath(f"unsafe path {relative!r}: leaves its folder through '..'")
    return root.joinpath(*posix.parts)


def safe_name(name: str) -> str:
    """`name` when it is one plain file-name component (no separator, not . or ..), else UnsafePath."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise UnsafePath(f"unsafe name {name!r}: empty or holds a NUL byte")
    if "/" in name or "\\" in name or name in (".", "..") or _DRIVE.match(name):
        raise UnsafePath(f"unsafe name {name!r}: not a plain file name")
    return name
