"""Error messages for one-line reports."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-empty line of `exc`'s message, or its type's name when it has none (torch and
    PIL raise some errors with empty messages)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
