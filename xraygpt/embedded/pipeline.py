"""The embedded pipeline around the training stack: prepare the assets, score a run, report.

`prepare(out, seed, ...)` writes under `out`:

    data/mimic/{train,val,test}/   synthetic images + summaries (XrayGPT layout), 112 px, with
                                   slots.json (findings on the encoder's 7 x 7 grid, stage 0's context)
    data/openi/{train,val,test}/   a second, smaller synthetic source for stage 2
    data/encoder_pretrain/train/   4x as many images (with slots.json), used only to pretrain the tiny encoder
    medclip_tiny/                  the tiny MedCLIP-format encoder (`assets.write_tiny_encoder`),
                                   pretrained (3000 steps, ~4.5 CPU minutes) on the findings and where each is drawn
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
from xraygpt.embedded.assets import TINY_SWIN, conversation_texts, token_grid, write_tiny_encoder, write_tiny_llm
from xraygpt.embedded.dataset import generate_dataset
from xraygpt.embedded.scores import finding_scores, format_table
from xraygpt.prompting import load_instructions

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE.json"
# Bump when what `prepare` writes changes, so stale folders are regenerated.
EMBEDDED_VERSION = 5


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
        "mimic": generate_dataset(out / "data" / "mimic", num_train=num_train, num_val=16, num_test=100, seed=seed,
                                  image_size=112, slot_grid=token_grid(TINY_SWIN)),
        "openi": generate_dataset(out / "data" / "openi", num_train=max(1, num_train // 3), num_val=16, num_test=100, seed=seed + 1, image_size=112),
    }
    logger.info("synthetic data: %s", counts)
    # The encoder's own pretraining set (like MedCLIP's, larger than and disjoint from the
    # summary data the aligner trains and is tested on).
    generate_dataset(out / "data" / "encoder_pretrain", num_train=4 * num_train, num_val=0, num_test=0,
                     seed=seed + 2, image_size=112, slot_grid=token_grid(TINY_SWIN))
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


# The learnability bars (README, "Learnability"): each run's macro F1 with the image and every
# finding's F1 at least these, the mean macro F1 over runs at least MEAN_BAR, shuffled images at
# least DROP_BAR lower than the image, and no finding asserted for a blank image.
MACRO_BAR, FINDING_BAR, MEAN_BAR, DROP_BAR = 0.85, 0.75, 0.90, 0.5


def seed_verdict(result: dict) -> list[str]:
    """The learnability bars one findings_metrics.json misses (empty when it clears them all)."""
    image = result["image"]
    missed = []
    if image["macro_f1"] < MACRO_BAR:
        missed.append(f"macro F1 {image['macro_f1']:.3f} < {MACRO_BAR}")
    missed += [f"{f} F1 {v['f1']:.3f} < {FINDING_BAR}" for f, v in image["per_finding"].items() if v["f1"] < FINDING_BAR]
    if image["macro_f1"] - result["shuffled"]["macro_f1"] < DROP_BAR:
        missed.append(f"shuffled only {image['macro_f1'] - result['shuffled']['macro_f1']:.3f} lower")
    if result["blank"]["predicted_positive_rate"] > 0:
        missed.append("findings for a blank image")
    return missed


def summarise_seeds(metric_files: list[Path]) -> str:
    """One line per run (findings_metrics.json): macro F1 with the image, each finding's F1 with the
    image, macro F1 with images shuffled and with a blank image, findings asserted per blank image,
    and the bars it misses; then the mean over runs and whether every bar holds."""
    head = "".join(f"{f[:12]:>13}" for f in FINDINGS)
    lines = [f"{'run':<44}{'image':>7}{head}{'shuffled':>10}{'blank':>7}{'blank/img':>10}  bars"]
    results = [json.loads(path.read_text()) for path in metric_files]
    for path, r in zip(metric_files, results):
        per = "".join(f"{r['image']['per_finding'][f]['f1']:>13.3f}" for f in FINDINGS)
        missed = seed_verdict(r)
        lines.append(f"{str(path.parent):<44}{r['image']['macro_f1']:>7.3f}{per}{r['shuffled']['macro_f1']:>10.3f}"
                     f"{r['blank']['macro_f1']:>7.3f}{r['blank']['predicted_positive_rate'] * len(FINDINGS):>10.2f}"
                     f"  {'; '.join(missed) if missed else 'all met'}")
    if results:
        mean = sum(r["image"]["macro_f1"] for r in results) / len(results)
        every = all(not seed_verdict(r) for r in results) and mean >= MEAN_BAR
        lines.append(f"mean macro F1 over {len(results)} runs: {mean:.3f} (bar {MEAN_BAR}); "
                     f"{'every bar met' if every else 'NOT every bar met'}")
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
