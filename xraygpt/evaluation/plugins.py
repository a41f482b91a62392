"""Optional model-based report metrics, off by default: BERTScore, CheXbert, RadGraph.

Each runs only when its config key names a local path (nothing is downloaded) and what it needs
is installed; otherwise its entry in metrics.json is "skipped: <reason>".  A plug-in that fails
while running is recorded as "failed: <error>" and the other metrics are still written.

- `bertscore_model`: a local Hugging Face encoder folder (e.g. roberta-large), scored with
  the `bert_score` package at the folder's last layer; mean P/R/F1 over samples.
- `chexbert_model`: a folder holding CheXbert's released `chexbert.pth` and the
  `bert-base-uncased` files it was trained from (config.json, vocab.txt).  The labeler is
  rebuilt here on transformers' BertModel (CheXbert's architecture: BERT, [CLS] state, 13
  four-way heads blank/positive/negative/uncertain and one two-way No Finding head), because
  its PyPI wrappers download weights in their constructors.  Its labels feed the same
  clinical-efficacy scores as the rule labeler (`xraygpt.evaluation.clinical`).
- `radgraph_model`: the folder holding the `radgraph` package's model archive
  (`radgraph.tar.gz` or `radgraph-xl.tar.gz`); the package is pointed at that folder instead
  of its download cache.  RadGraph F1 (partial reward), mean over samples.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import torch

from xraygpt.errors import first_line
from xraygpt.evaluation.chexpert_rules import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN
from xraygpt.evaluation.clinical import clinical_efficacy

logger = logging.getLogger(__name__)

# CheXbert's head order, and the label each head's class index stands for.
CHEXBERT_HEADS = OBSERVATIONS[1:] + OBSERVATIONS[:1]
CHEXBERT_CLASSES = (np.nan, POSITIVE, NEGATIVE, UNCERTAIN)
PLUGIN_PACKAGES = {"bertscore": "bert_score", "chexbert": "transformers", "radgraph": "radgraph"}


class CheXbert(torch.nn.Module):
    """BERT + one linear head per observation on the [CLS] state (CheXbert's labeler)."""

    def __init__(self, config):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config)
        self.linear_heads = torch.nn.ModuleList(
            [torch.nn.Linear(config.hidden_size, 4) for _ in CHEXBERT_HEADS[:-1]] + [torch.nn.Linear(config.hidden_size, 2)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) ids -> 14 logit tensors, (B, 4) each and (B, 2) for No Finding."""
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return [head(cls) for head in self.linear_heads]


def chexbert_labels(reports: list[str], folder: Path, device: torch.device, batch_size: int = 32) -> np.ndarray:
    """(N, 14) labels of `reports` (CheXpert convention, `OBSERVATIONS` order) from CheXbert in `folder`."""
    from transformers import BertConfig, BertTokenizer

    config = BertConfig.from_pretrained(str(folder), local_files_only=True)
    tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    state = torch.load(folder / "chexbert.pth", map_location="cpu", weights_only=True)["model_state_dict"]
    model = CheXbert(config)
    missing, _ = model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"{folder / 'chexbert.pth'} lacks weight {missing[0]}")
    model.to(device).eval()
    rows = []
    for start in range(0, len(reports), batch_size):
        batch = tokenizer([" ".join(r.split()) for r in reports[start:start + batch_size]], truncation=True,
                          max_length=512, padding=True, return_tensors="pt").to(device)
        with torch.no_grad():
            classes = torch.stack([h.argmax(dim=1) for h in model(batch["input_ids"], batch["attention_mask"])], dim=1)
        rows.append(np.asarray(CHEXBERT_CLASSES)[classes.cpu().numpy()])
    labels = np.concatenate(rows) if rows else np.empty((0, len(CHEXBERT_HEADS)))
    return labels[:, [CHEXBERT_HEADS.index(o) for o in OBSERVATIONS]]


def _chexbert(predictions: list[str], references: list[str], path: Path, device: torch.device) -> dict:
    return clinical_efficacy(chexbert_labels(predictions, path, device), chexbert_labels(references, path, device))


def _bertscore(predictions: list[str], references: list[str], path: Path, device: torch.device) -> dict:
    import bert_score

    layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
    p, r, f = bert_score.score(predictions, references, model_type=str(path), num_layers=layers, device=str(device))
    return {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f.mean()), "layer": layers}


def _radgraph(predictions: list[str], references: list[str], path: Path, device: torch.device) -> dict:
    import radgraph

    archive = next((p for p in sorted(path.glob("*.tar.gz")) if p.name in ("radgraph.tar.gz", "radgraph-xl.tar.gz")), None)
    if archive is None:
        raise ValueError(f"{path} holds neither radgraph.tar.gz nor radgraph-xl.tar.gz")
    importlib.import_module(radgraph.F1RadGraph.__module__).CACHE_DIR = str(path)
    scorer = radgraph.F1RadGraph(reward_level="partial", model_type=archive.name.removesuffix(".tar.gz"),
                                 cuda=-1 if device.type == "cpu" else 0)
    mean, *_ = scorer(hyps=predictions, refs=references)
    return {"f1_partial": float(mean)}


RUNNERS = {"bertscore": _bertscore, "chexbert": _chexbert, "radgraph": _radgraph}


def run_plugins(predictions: list[str], references: list[str], paths: dict[str, str | None],
                device: torch.device) -> dict[str, dict | str]:
    """{plug-in: its scores, or "skipped: ..." / "failed: ..."} for each of RUNNERS.

    Args:
        paths: {plug-in: local path from its config key (`<name>_model`), or None}.
    """
    out: dict[str, dict | str] = {}
    for name, runner in RUNNERS.items():
        path = paths.get(name)
        if not path:
            out[name] = f"skipped: evaluation.{name}_model is not set"
        elif not Path(path).exists():
            out[name] = f"skipped: {path} does not exist"
        elif importlib.util.find_spec(PLUGIN_PACKAGES[name]) is None:
            out[name] = f"skipped: the {PLUGIN_PACKAGES[name]} package is not installed"
        else:
            try:
                out[name] = runner(predictions, references, Path(path), device)
            except Exception as exc:  # a plug-in must not lose the other metrics
                logger.warning("plug-in %s failed: %s", name, exc)
                out[name] = f"failed: {first_line(exc)}"
    return out
