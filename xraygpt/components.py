"""THE list of modules that register models, datasets, dataset formats, processors, tasks, runners and schedules.

Importing a module runs its `@register` decorators; nothing else in the project imports for
side effects.  Add a new registering module here, and only here.
"""

from __future__ import annotations

import importlib

REGISTERING_MODULES = (
    "xraygpt.models.xraygpt",
    "xraygpt.models.llm_sft",
    "xraygpt.data.formats",
    "xraygpt.data.datasets",
    "xraygpt.data.study_dataset",
    "xraygpt.data.vqa",
    "xraygpt.data.text_datasets",
    "xraygpt.data.transforms",
    "xraygpt.training.tasks",
    "xraygpt.training.runner",
    "xraygpt.training.schedules",
)


def register_all() -> None:
    """Import every registering module once (later calls are no-ops via the import cache)."""
    for name in REGISTERING_MODULES:
        importlib.import_module(name)
