"""Name -> constructor registry for models, datasets, dataset formats, processors, tasks, runners and LR schedules.

Registration is explicit and loud: `register(kind, name)` raises on a duplicate name, and
`get(kind, name)` raises listing the known names (and the closest one) for an unknown name.
Which modules register things is listed in one place: `xraygpt.components`.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, TypeVar

KINDS = ("model", "dataset", "dataset_format", "processor", "task", "runner", "lr_schedule")

_REGISTRY: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown kind, unknown name or duplicate name; the message is one line."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


def _check_kind(kind: str) -> dict[str, Any]:
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown registry kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return _REGISTRY[kind]


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator registering a class or function under `kind`/`name`; a duplicate name raises."""
    table = _check_kind(kind)

    def decorator(obj: T) -> T:
        if name in table:
            raise RegistryError(
                f"duplicate {kind} name {name!r}: already registered by "
                f"{table[name].__module__}.{table[name].__qualname__}"
            )
        table[name] = obj
        return obj

    return decorator


def closest(name: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """The candidate most similar to `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def get(kind: str, name: str) -> Any:
    """The object registered under `kind`/`name`; an unknown name raises listing the known ones."""
    table = _check_kind(kind)
    if name not in table:
        hint = closest(name, sorted(table))
        hint_text = f" (did you mean {hint!r}?)" if hint else ""
        raise RegistryError(
            f"unknown {kind} {name!r}{hint_text}; known: {', '.join(sorted(table)) or '(none)'}"
        )
    return table[name]


def names(kind: str) -> list[str]:
    """Sorted registered names of one kind."""
    return sorted(_check_kind(kind))


def registered(kind: str) -> dict[str, Any]:
    """{name: object} of one kind, in registration order (a copy)."""
    return dict(_check_kind(kind))
