"""`log.jsonl` (one JSON object per logged step), the loss-curve PNG drawn from it, and the
optional dashboards of `run.report_to` (`tensorboard`: event files under `output_dir/tensorboard/`,
written with torch's own `SummaryWriter`; needs the `tensorboard` package, extra `[tensorboard]`)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from xraygpt.atomic import append_lines, atomic_write_text

logger = logging.getLogger(__name__)


REPORTERS = ("tensorboard",)


class TensorBoardLog:
    """Each logged record's numbers as scalars `train/<key>` at its step, in TensorBoard event files.

    `purge_step` (the step a resumed run continues from) drops what a killed run had logged after
    it, as `JsonlLog.truncate_after` does for log.jsonl.
    """

    def __init__(self, folder: str | os.PathLike, purge_step: int | None = None):
        self.writer = self.writer_class()(str(folder), purge_step=purge_step)

    @staticmethod
    def writer_class():
        """torch's SummaryWriter, or ImportError saying what to install (checked before a run starts)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("run.report_to: tensorboard needs the tensorboard package "
                              "(pip install -c constraints.txt -e '.[tensorboard]')") from None
        return SummaryWriter

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class JsonlLog:
    """Appends one JSON line per record to `path`; `truncate_after(step)` drops lines of a killed run.

    A line that is not a JSON object (torn by a killed run) is dropped with a warning naming the
    file, never an error: the log is a record of the run, not something a resume depends on.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Keep only records with record["step"] <= step (used when resuming from `step`)."""
        if not self.path.is_file():
            return
        kept = [record for record in self.read() if record.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict) -> None:
        append_lines(self.path, [json.dumps(record)])

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records, bad = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
        if bad:
            logger.warning("%s: %d unreadable lines dropped (torn by a killed run?)", self.path, bad)
        return records


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
