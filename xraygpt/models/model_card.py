"""The model card (README.md) of an exported model folder, generated from the run it came from.

Sections: the model (encoder, projection, LLM, prompt), the base models and where they came
from, the training data (each dataset of the run's config with its sample count read from the
split's annotations and its preparation report `stats.json` when there is one), the training
settings (the run section) and what the log says (steps, first and last loss), the evaluation
metrics (metrics.json) when given, example outputs (samples.jsonl), how to load it, and its
intended use and limitations.  Everything comes from plain data (`CardFacts`); reading the run's
files is `read_run_facts`'s job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

LIMITATIONS = """\
**Research tool, not a diagnosis.** This model is not a medical device and has not been
validated clinically. It must not be used to diagnose, triage or treat anyone, nor to replace
a radiologist's reading.

What it cannot do:
- It writes fluent text that can be wrong: it can invent findings that are not in the image
  and miss findings that are (hallucination and omission), with equal confidence.
- It sees one image at a time: no lateral view, prior studies, clinical history or indication.
- It knows only what its training data showed (listed above): images from other hospitals,
  scanners, views, patient groups or languages may be read worse, and biases of that data
  (who was imaged, how reports were written) are carried into its answers.
- Only the projection was trained; the image encoder and the LLM are the base models above,
  with their own limitations and licences.
- Its scores (when listed above) were measured with automatic metrics on one held-out split;
  they are not clinical accuracy.
"""


@dataclasses.dataclass
class CardFacts:
    """What the card reports, as plain data (see `read_run_facts`)."""

    name: str                        # the folder, as the export was told to write it
    model: dict                      # the run's resolved model section (original paths)
    run: dict                        # the run's resolved run section
    datasets: list[dict]             # [{name, format, root, eval_root, samples, images, prepare}]
    trained: dict                    # {weight name: shape} of projection.safetensors
    log: dict                        # {steps, first_loss, last_loss} from log.jsonl ({} when absent)
    metrics: dict | None             # metrics.json's content, or None
    samples: list[dict]              # a few of samples.jsonl's rows
    llm: dict                        # {copied: bool, path, model_type, hidden_size, num_hidden_layers, vocab_size}
    encoder: dict                    # {source, image_size, output}
    source_run: str                  # the run folder, as given


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        if isinstance(row, dict):
            rows.append(row)
    return rows


def dataset_facts(name: str, section: dict) -> dict:
    """One training dataset: its config keys and, for the `xraygpt` format, the sample and image
    counts of its annotation file; the preparation's stats.json beside the split when present."""
    root = Path(section.get("root") or "")
    facts = {"name": name, "format": section.get("format", "xraygpt"), "root": str(root),
             "eval_root": section.get("eval_root"), "max_samples": section.get("max_samples") or 0,
             "samples": None, "images": None, "prepare": None}
    if facts["format"] == "xraygpt":
        ann = _read_json(Path(section["ann_file"]) if section.get("ann_file") else root / "filter_cap.json")
        if isinstance(ann, dict) and isinstance(ann.get("annotations"), list):
            rows = [a for a in ann["annotations"] if isinstance(a, dict)]
            facts["samples"] = len(rows)
            facts["images"] = len({a.get("image_id") for a in rows})
    for candidate in (root / "stats.json", root.parent / "stats.json"):
        stats = _read_json(candidate)
        if isinstance(stats, dict) and "totals" in stats:
            facts["prepare"] = {"file": str(candidate), "command": stats.get("command"),
                                "totals": stats.get("totals"), "outputs": stats.get("outputs")}
            break
    return facts


def sample_facts(run: Path, count: int = 3) -> list[dict]:
    """The first `count` rows of the run's samples.jsonl (answers generated at the end of training)."""
    return _read_jsonl(run / "samples.jsonl")[:count]


def log_facts(run: Path) -> dict:
    """Steps and first/last loss of the run's log.jsonl ({} when it has none)."""
    records = [r for r in _read_jsonl(run / "log.jsonl") if "step" in r and "loss" in r]
    if not records:
        return {}
    return {"steps": records[-1]["step"], "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"],
            "logged": len(records)}


def llm_facts(llm_path: Path, copied: bool) -> dict:
    """What the LLM folder's config.json says about it."""
    config = _read_json(llm_path / "config.json") or {}
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")
    return {"copied": copied, "path": str(llm_path), **{k: config.get(k) for k in keys}}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def _table(rows: list[tuple], header: tuple[str, ...]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out


def _metric_rows(metrics: dict) -> list[tuple]:
    """(metric, value, 95% interval) rows: metrics.json's `headline` (with `confidence_intervals`)
    when it has one, else its top-level numbers."""
    headline = metrics.get("headline") if isinstance(metrics.get("headline"), dict) else None
    intervals = metrics.get("confidence_intervals") if isinstance(metrics.get("confidence_intervals"), dict) else {}
    source = headline if headline is not None else {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    rows = []
    for key, value in source.items():
        ci = intervals.get(key)
        ci_text = f"{ci[0]:.4g} - {ci[1]:.4g}" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        rows.append((key, value, ci_text))
    return rows


def render_card(facts: CardFacts) -> str:
    """The model card's Markdown text."""
    m, run, enc, llm = facts.model, facts.run, facts.encoder, facts.llm
    proj = facts.trained.get("projector.proj.weight")
    lines = [f"# {Path(facts.name).name}", "",
             "A chest X-ray summarisation model in the XrayGPT recipe: a frozen MedCLIP image encoder "
             "feeds one trained linear projection into a frozen LLM, which writes the findings and "
             "impression of a chest radiograph and answers follow-up questions.", "",
             "> **Research tool, not a diagnosis.** See *Intended use and limitations* below.", "",
             "## Model", ""]
    lines += _table([
        ("image encoder", f"MedCLIP vision tower (Swin), frozen; {enc.get('image_size')} px images, "
                          f"`{enc.get('output')}` output tokens"),
        ("projection", f"one linear layer, {' -> '.join(map(str, reversed(proj))) if proj else '?'} features, bias "
                       f"{m.get('projector_bias')}, input normalisation {m.get('projector_norm')}: the only trained part"),
        ("LLM", f"{llm.get('model_type')} ({llm.get('num_hidden_layers')} layers, hidden size {llm.get('hidden_size')}, "
                f"vocabulary {llm.get('vocab_size')}, context {llm.get('max_position_embeddings')}), frozen, "
                f"dtype {m.get('llm', {}).get('dtype')}"),
        ("prompt", f"`{(m.get('prompt') or {}).get('system', '')}{(m.get('prompt') or {}).get('template', '')}` "
                   f"(the instruction fills `{{}}` and holds `<ImageHere>`), answers end at "
                   f"`{(m.get('prompt') or {}).get('end_sym')}`"),
    ], ("part", "what"))
    lines += ["", "## Base models", ""]
    lines += _table([
        ("image encoder", enc.get("source"), "copied into `encoder/` (vision weights only)"),
        ("LLM", llm["path"], "copied into `llm/`" if llm["copied"] else
         "referenced, not copied: `llm_reference.json` holds the sha256 of its files, checked at every load"),
    ], ("part", "source at export", "in this folder"))
    lines += ["", "## Training data", ""]
    rows = []
    for ds in facts.datasets:
        count = "" if ds["samples"] is None else f"{ds['samples']} samples, {ds['images']} images"
        if ds["max_samples"]:
            count += f" (at most {ds['max_samples']} used)"
        rows.append((ds["name"], ds["format"], ds["root"], count or "(not counted)", ds["eval_root"] or ""))
    lines += _table(rows, ("dataset", "format", "training split", "size", "held-out split"))
    for ds in facts.datasets:
        prep = ds.get("prepare")
        if prep:
            totals = "; ".join(f"{unit}s: {t.get('in')} in, {t.get('out')} kept, {t.get('dropped')} dropped"
                               for unit, t in (prep.get("totals") or {}).items())
            outputs = ", ".join(f"{split}: " + ", ".join(f"{n} {what}" for what, n in counts.items())
                                for split, counts in (prep.get("outputs") or {}).items())
            lines += ["", f"`{ds['name']}` was prepared by `python -m xraygpt.data.prepare {prep.get('command')}` "
                          f"({prep['file']}): {totals}. Splits: {outputs}."]
    lines += ["", "## Training", ""]
    settings = [(k, v) for k, v in run.items() if k not in ("output_dir", "resume_ckpt_path") and not isinstance(v, dict)]
    settings.append(("lr_sched", run.get("lr_sched")))
    trained_text = (f"Trained for {facts.log['steps']} steps; loss {facts.log['first_loss']:.4g} at the first "
                    f"logged step, {facts.log['last_loss']:.4g} at the last." if facts.log else "The run has no log.jsonl.")
    lines += [f"Exported from the run `{facts.source_run}`. {trained_text}", ""]
    lines += _table(settings, ("setting", "value"))
    lines += ["", "## Evaluation", ""]
    if facts.metrics:
        lines += ["From `metrics.json` (copied into this folder); 0-1 scale, CIDEr-D 0-10.", ""]
        lines += _table(_metric_rows(facts.metrics), ("metric", "value", "95% interval"))
        if isinstance(facts.metrics.get("num_scored"), int):
            lines += ["", f"Scored on {facts.metrics['num_scored']} images."]
    else:
        lines += ["No metrics.json was given with the run: this model has not been scored here "
                  "(`python evaluate.py --model FOLDER --cfg-path EVAL.yaml`)."]
    if facts.samples:
        lines += ["", "## Example outputs", "", "Generated at the end of training (the run's samples.jsonl):", ""]
        lines += _table([(s.get("image_id"), s.get("prediction"), s.get("reference")) for s in facts.samples],
                        ("image", "generated", "reference"))
    lines += ["", "## Use", "", "```python", "from xraygpt.models.xraygpt import XrayGPT", "",
              f'model = XrayGPT.from_pretrained("{facts.name}")   # local files only; nothing downloads',
              "```", "", "```bash",
              f"python evaluate.py --model {facts.name} --cfg-path eval_configs/EVAL.yaml",
              f"python demo.py --model {facts.name}", "```", "",
              "## Intended use and limitations", "",
              "Intended use: research on chest X-ray report summarisation and vision-language alignment, "
              "and teaching; outputs are drafts for a qualified reader to check.", "", LIMITATIONS]
    return "\n".join(lines).rstrip("\n") + "\n"
