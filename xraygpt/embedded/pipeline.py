"""The embedded pipeline around the training stack: prepare the assets, score a run, report.

`prepare(out, seed, ...)` writes under `out`:

    data/mimic/{train,val,test}/   synthetic images + summaries (XrayGPT layout), 112 px
    data/openi/{train,val,test}/   a second, smaller synthetic source for stage 2
    data/encoder_pretrain/train/   4x as many images, used only to pretrain the tiny encoder
    medclip_tiny/                  the tiny MedCLIP-format encoder (`assets.write_tiny_encoder`),
                                   pretrained (3000 steps, ~4.5 CPU minutes) on the findings
    llm_tiny/                      the tiny LLaMA + tokenizer (`assets.write_tiny_llm`)
    COMPLETE.json                  the settings it was prepared with (a rerun with equal ones is skipped)

`evaluate_findings(run, split, out)` generates summaries for a held-out synthetic split three ways
(own image, images shuffled across the split, blank image) and writes predictions_<mode>.jsonl and
findings_metrics.json (`scores.finding_scores` per mode: P/R/F1 in [0, 1]).  `report(stage_dirs,
eval_dir)` and `summarise_seeds(metric_files)` return plain text.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from xraygpt.atomic import atomic_write_text
from xraygpt.embedded.anatomy import FINDINGS
from xraygpt.embedded.assets import conversation_texts, write_tiny_encoder, write_tiny_llm
from xraygpt.embedded.dataset import generate_dataset
from xraygpt.embedded.scores import finding_scores, format_table
from xraygpt.prompting import load_instructions

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE.json"
# Bump when what `prepare` writes changes, so stale folders are regenerated.
EMBEDDED_VERSION = 3


def prepare(out: Path, seed: int = 0, num_train: int = 1000, force: bool = False,
            prompt_path: str = "prompts/alignment.txt", encoder_steps: int = 3000) -> Path:
    """Generate the embedded default under `out` (skipped when already complete unless `force`)."""
    marker = out / COMPLETE_MARKER
    settings = {"version": EMBEDDED_VERSION, "seed": seed, "num_train": num_train, "encoder_steps": encoder_steps}
    if marker.is_file() and not force and json.loads(marker.read_text()) == settings:
        logger.info("embedded default already prepared in %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    counts = {
        "mimic": generate_dataset(out / "data" / "mimic", num_train=num_train, num_val=16, num_test=100, seed=seed, image_size=112),
        "openi": generate_dataset(out / "data" / "openi", num_train=max(1, num_train // 3), num_val=16, num_test=100, seed=seed + 1, image_size=112),
    }
    logger.info("synthetic data: %s", counts)
    # The encoder's own pretraining set (like MedCLIP's, larger than and disjoint from the
    # summary data the aligner trains and is tested on).
    generate_dataset(out / "data" / "encoder_pretrain", num_train=4 * num_train, num_val=0, num_test=0,
                     seed=seed + 2, image_size=112)
    write_tiny_encoder(out / "medclip_tiny", seed, train_split=out / "data" / "encoder_pretrain" / "train", steps=encoder_steps)
    captions = [a["caption"] for a in json.loads((out / "data" / "mimic" / "train" / "filter_cap.json").read_text())["annotations"]]
    texts = conversation_texts(captions, load_instructions(prompt_path), random.Random(seed))
    write_tiny_llm(out / "llm_tiny", texts, seed)
    atomic_write_text(marker, json.dumps(settings))
    return out


def report(stage_dirs: list[Path], eval_dir: Path | None = None) -> str:
    """Loss drop per stage, samples next to references, output locations and (with `eval_dir`)
    the finding-level table of `evaluate_findings`, as text."""
    lines = []
    for d in stage_dirs:
        records = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines() if x.strip()]
        first, last = records[0]["loss"], records[-1]["loss"]
        lines.append(f"{d}: loss {first:.3f} (step {records[0]['step']}) -> {last:.3f} (step {records[-1]['step']}), "
                     f"{100 * (first - last) / first:.1f}% lower")
    final = stage_dirs[-1]
    lines.append("")
    lines.append(f"Generated summaries ({final / 'samples.jsonl'}):")
    for row in map(json.loads, (final / "samples.jsonl").read_text().splitlines()):
        lines.append(f"- {row['image_id']}")
        lines.append(f"    generated: {row['prediction']}")
        lines.append(f"    reference: {row['reference']}")
    lines.append("")
    for d in stage_dirs:
        lines.append(f"{d}: checkpoints in {d / 'checkpoints'}, log {d / 'log.jsonl'}, loss plot {d / 'loss.png'}")
    if eval_dir is not None:
        results = json.loads((eval_dir / "findings_metrics.json").read_text())
        lines += ["", f"Held-out finding-level scores ({eval_dir}; image = each image, shuffled = images "
                      "shuffled across the split, blank = a black image):", format_table(results)]
    return "\n".join(lines)


def summarise_seeds(metric_files: list[Path]) -> str:
    """One line per seed run: macro F1 with the image, shuffled and blank, and findings per blank image."""
    lines = [f"{'run':<48}{'image':>8}{'shuffled':>10}{'blank':>8}{'blank findings/img':>20}"]
    for path in metric_files:
        r = json.loads(path.read_text())
        lines.append(f"{str(path.parent):<48}{r['image']['macro_f1']:>8.3f}{r['shuffled']['macro_f1']:>10.3f}"
                     f"{r['blank']['macro_f1']:>8.3f}{r['blank']['predicted_positive_rate'] * len(FINDINGS):>20.2f}")
    return "\n".join(lines)


def evaluate_findings(run_dir: Path, split_dir: Path, out_dir: Path, batch_size: int = 50,
                      max_new_tokens: int = 80, seed: int = 0) -> dict:
    """Generate summaries for a held-out synthetic split with the run's final weights, three ways
    (own image, images shuffled across the split, blank image), and score findings against
    `labels.json`.  Writes predictions_<mode>.jsonl and findings_metrics.json to `out_dir`."""
    from xraygpt import builders
    from xraygpt.config import load_config
    from xraygpt.data.datasets import MixedDataset, build_openi
    from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval
    from xraygpt.evaluation.generate import IMAGE_ABLATION_MODES, generate_for_dataset

    cfg = load_config(run_dir / "config.yaml", [f"model.ckpt={run_dir / 'checkpoints' / 'checkpoint_last.pt'}"])
    model = builders.build_model(cfg.model, seed)
    processor = MedCLIPImageEval(preprocessing=model.image_preprocessing)
    prompt_path = next(iter(cfg.datasets.values())).prompt_path
    dataset = MixedDataset([build_openi(str(split_dir), processor, CaptionProcessor(), prompt_path=prompt_path)], seed)
    labels = json.loads((split_dir / "labels.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for mode in IMAGE_ABLATION_MODES:
        rows = generate_for_dataset(model, dataset, batch_size, mode, processor.image_size, processor,
                                    max_new_tokens=max_new_tokens)
        atomic_write_text(out_dir / f"predictions_{mode}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        results[mode] = finding_scores([r["prediction"] for r in rows], [labels[r["image_id"]] for r in rows])
    atomic_write_text(out_dir / "findings_metrics.json", json.dumps(results, indent=2))
    logger.info("finding-level scores on %s (%d images):\n%s", split_dir, len(dataset), format_table(results))
    return results
