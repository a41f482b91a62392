"""`log.jsonl` (one JSON object per logged step) and the loss-curve PNG drawn from it."""

from __future__ import annotations

import json
import os
from pathlib import Path


class JsonlLog:
    """Appends one JSON line per record to `path`; `truncate_after(step)` drops lines of a killed run."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Keep only records with record["step"] <= step (used when resuming from `step`)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_loss(records: list[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """Training loss (and LR) against step as a PNG; None when there is nothing to plot."""
    points = [(r["step"], r["loss"]) for r in records if "loss" in r]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean per-sample token CE)")
    lrs = [(r["step"], r["lr"]) for r in records if "lr" in r]
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs), color="tab:orange", alpha=0.6, label="lr")
        ax2.set_ylabel("learning rate")
    ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
