"""The learnability summary: per-finding F1 columns, the bars each run misses, the mean row."""

import json

from xraygpt.embedded.anatomy import FINDINGS
from xraygpt.embedded.pipeline import seed_verdict, summarise_seeds


def _result(image_f1: dict, shuffled: float = 0.3, blank_rate: float = 0.0) -> dict:
    per = {f: {"precision": v, "recall": v, "f1": v, "support": 35} for f, v in image_f1.items()}
    return {
        "image": {"per_finding": per, "macro_f1": sum(image_f1.values()) / len(image_f1), "predicted_positive_rate": 0.35},
        "shuffled": {"per_finding": per, "macro_f1": shuffled, "predicted_positive_rate": 0.35},
        "blank": {"per_finding": per, "macro_f1": 0.0, "predicted_positive_rate": blank_rate},
    }


def test_a_run_that_clears_every_bar():
    assert seed_verdict(_result({f: 0.95 for f in FINDINGS})) == []


def test_each_missed_bar_is_named():
    weak_nodule = {**{f: 0.97 for f in FINDINGS}, "nodule": 0.70}
    assert seed_verdict(_result(weak_nodule)) == ["nodule F1 0.700 < 0.75"]
    low = {f: 0.80 for f in FINDINGS}
    assert seed_verdict(_result(low, shuffled=0.35)) == ["macro F1 0.800 < 0.85", "shuffled only 0.450 lower"]
    assert seed_verdict(_result({f: 0.95 for f in FINDINGS}, blank_rate=0.01)) == ["findings for a blank image"]


def test_summary_lists_every_finding_and_the_mean(tmp_path):
    files = []
    for i, scores in enumerate([{f: 0.95 for f in FINDINGS}, {**{f: 0.95 for f in FINDINGS}, "nodule": 0.6}]):
        path = tmp_path / f"seed_{i}" / "findings_metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps(_result(scores)))
        files.append(path)
    text = summarise_seeds(files)
    header, first, second, mean = text.splitlines()
    assert all(f[:12] in header for f in FINDINGS)
    assert first.endswith("all met") and "nodule F1 0.600 < 0.75" in second
    assert mean.startswith("mean macro F1 over 2 runs: 0.906") and mean.endswith("NOT every bar met")
    assert summarise_seeds(files[:1]).splitlines()[-1].endswith("every bar met")
