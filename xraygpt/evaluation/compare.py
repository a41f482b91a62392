"""Compare mode: several predictions.jsonl (stage 1 vs stage 2, image vs blank image, ...) side by side.

Each file is scored like `evaluate.py` scores its own (`report_metrics.compute_metrics`,
without bootstrap intervals), on the ids present in every file, so the columns describe the
same images.  Unreadable lines are counted as skipped in their file's column.
"""

from __future__ import annotations

from pathlib import Path

from xraygpt.evaluation.chexpert_rules import ChexpertRuleLabeler
from xraygpt.evaluation.predictions import read_predictions
from xraygpt.evaluation.report_metrics import compute_metrics, format_comparison


def compare_predictions(paths: list[Path], names: list[str] | None = None, phrases_dir: str | None = None) -> tuple[str, dict]:
    """(table, {name: metrics}) for two or more predictions files.

    Args:
        paths: predictions.jsonl files.
        names: one column name per file (default: each file's folder name, else its path).
        phrases_dir: phrase lists for the rule labeler (None: the package's).
    """
    if len(paths) < 2:
        raise ValueError(f"compare needs at least two predictions files, got {len(paths)}")
    if names is None:
        names = [p.parent.name for p in paths]
        if len(set(names)) < len(names):
            names = [str(p) for p in paths]
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise ValueError(f"--names needs {len(paths)} distinct names, got {names}")
    loaded = [read_predictions(p) for p in paths]
    common = set.intersection(*({str(r["image_id"]) for r in rows if "image_id" in r} for rows, _ in loaded))
    labeler = ChexpertRuleLabeler(phrases_dir)
    results = {}
    for name, (rows, bad) in zip(names, loaded):
        mine = [r for r in rows if str(r.get("image_id")) in common]
        skipped = {"unreadable line": [f"line {n}" for n in bad]} if bad else None
        results[name] = compute_metrics(mine, labeler, resamples=0, skipped=skipped)
    ignored = ", ".join(f"{name}: {len(rows) - len([r for r in rows if str(r.get('image_id')) in common])}"
                        for name, (rows, _) in zip(names, loaded))
    header = f"compared on the {len(common)} ids present in every file (rows of other ids ignored: {ignored})"
    return header + "\n" + format_comparison(results), results
