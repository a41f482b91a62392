"""The VQA proof on the embedded default: questions about the drawn findings, answered from the image.

A sibling of the summary pipeline (`pipeline.py`), sharing its prepared folder (images, the
pretrained tiny encoder; `python -m xraygpt.embedded prepare`) and nothing else:

`prepare_vqa(out, prepared, seed)` writes under `out`:

    mimic/, openi/          each source's questions as a SLAKE release (`vqa_world.write_release`):
                            train.json, validate.json, test.json (English and Chinese), imgs -> the source
    mimic/slots_sided.json  stage 0's slot words with the lung findings' sides (`vqa_world.sided_slots`)
    mimic/stage0_train.jsonl  stage 0's text-only conversations: slot words + questions -> answers
    llm_tiny/               a tiny LLaMA whose SentencePiece tokenizer (`assets.write_tiny_llm`) is
                            trained on the English summary texts (as `prepare`'s), stage 0's conversations
                            and the questions and answers in both languages, so Chinese characters and
                            each slot item are pieces of their own (`check_slot_tokens`)
    COMPLETE.json           the settings it was prepared with (a rerun with equal ones is skipped)

The generator seeds of the sources are `prepare`'s: `seed` for mimic and `seed + 1` for openi
(`SOURCE_SEED_OFFSETS`; `vqa_world.image_cases` checks them against every caption).

`evaluate_vqa(run, releases, out)` answers the held-out questions (the `test.json` of each
release) with a trained run three ways, as `pipeline.evaluate_findings` writes summaries:
`image` (each question with its own image), `shuffled` (each question with the image of
another one: a seeded derangement of the distinct images, so no question keeps its image even
when several questions share one, which `evaluation.generate`'s key + 1 rule would not
guarantee) and `blank` (a black image).  It writes predictions_<mode>.jsonl and
vqa_metrics.json: per mode `evaluation.vqa_metrics` (closed-question accuracy, open-question
exact match and token recall, per language) and the same per question kind.  Each prediction
row holds the question's own image (`image`: release/stem, e.g. `openi/test_000001`) and the one it was
shown (`image_source`).  `proof_lines`
gives one line per run and language with the bars: closed accuracy >= CLOSED_BAR with the
image and <= SHUFFLED_BAR with shuffled images, in each language.

`stage0_reading(stage0_run, release, out_file)` asks the stage-0 LLM the held-out closed questions
with the image's sided slot words in the slot (text only): its own reading, so a miss after stage 2
can be placed in the LLM or in the projection.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

from xraygpt.atomic import atomic_write_text
from xraygpt.embedded import vqa_world

logger = logging.getLogger(__name__)

SOURCE_SEED_OFFSETS = {"mimic": 0, "openi": 1}  # as `pipeline.prepare` seeds generate_dataset per source
VQA_VERSION = 4  # bump when what prepare_vqa writes changes
COMPLETE_MARKER = "COMPLETE.json"
MODES = ("image", "shuffled", "blank")
CLOSED_BAR, SHUFFLED_BAR = 0.90, 0.60
# How many more times the training slots join the tokenizer's texts, tried in turn until each slot item
# (`o`, `cardiomegaly`, `reffusion`, `lnodule`, ...) is one piece of the 512 (the first that works is kept).
SLOT_TEXT_REPEATS = (0, 1, 2, 4, 8)


def prepare_vqa(out: Path, prepared: Path, seed: int = 0, prompt_path: str = "prompts/alignment.txt",
                force: bool = False) -> Path:
    """Write the questions, stage 0's conversations and the tiny LLM under `out` (module docstring).

    `prepared` is a folder written by `python -m xraygpt.embedded prepare --seed seed`.
    """
    from xraygpt.embedded.assets import conversation_texts, write_tiny_llm
    from xraygpt.prompting import load_instructions

    marker = out / COMPLETE_MARKER
    settings = {"version": VQA_VERSION, "seed": seed, "prepared": str(prepared.resolve())}
    if marker.is_file() and not force and json.loads(marker.read_text()) == settings:
        logger.info("VQA proof already prepared in %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    questions = {}
    for source, offset in SOURCE_SEED_OFFSETS.items():
        questions[source] = vqa_world.write_release(out / source, prepared / "data" / source, seed + offset, seed)
        counts = {split: len(qs) for split, qs in questions[source].items()}
        logger.info("%s questions (both languages): %s", source, counts)
    slots = json.loads((out / "mimic" / vqa_world.SIDED_SLOTS_FILE).read_text())
    conversations = vqa_world.stage0_conversations(questions["mimic"]["train"], slots, seed)
    atomic_write_text(out / "mimic" / "stage0_train.jsonl",
                      "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations))
    annotations = json.loads((prepared / "data" / "mimic" / "train" / "filter_cap.json").read_text())["annotations"]
    texts = conversation_texts([a["caption"] for a in annotations], load_instructions(prompt_path), random.Random(seed))
    texts += vqa_world.conversation_texts(conversations) + vqa_world.template_texts(questions["openi"]["train"])
    train_slots = [slots[image_id] for image_id in sorted(slots) if image_id.startswith("train_")]
    for repeats in SLOT_TEXT_REPEATS:  # the slot texts again, more often, until every slot item is one piece
        write_tiny_llm(out / "llm_tiny", texts + train_slots * repeats, seed)
        if not check_slot_tokens(out / "llm_tiny", slots):
            break
    atomic_write_text(marker, json.dumps(settings))
    return out


def check_slot_tokens(llm: Path, slots: dict[str, str]) -> list[str]:
    """The slot items that the tokenizer in `llm` does not make one token (logged; [] when each is one,
    so that the 49 slot items of stage 0 line up with the 49 image tokens of stages 1-2)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(llm), local_files_only=True)
    items = sorted({item for slot in slots.values() for item in slot.split(" ")})
    split = [item for item in items if len(tokenizer(item, add_special_tokens=False)["input_ids"]) != 1]
    if split:
        logger.warning("slot items that are not one token of %s: %s", llm, ", ".join(split))
    return split


def shuffled_images(files: list[Path], seed: int) -> dict[Path, Path]:
    """A seeded derangement of the distinct image files: file -> another file (needs >= 2 files)."""
    distinct = sorted(set(files))
    if len(distinct) < 2:
        raise ValueError("shuffling needs at least two distinct images")
    random.Random(f"vqa-shuffle:{seed}").shuffle(distinct)
    return {f: distinct[(i + 1) % len(distinct)] for i, f in enumerate(distinct)}


def evaluate_vqa(run_dir: Path, releases: list[Path], out_dir: Path, seed: int = 0, batch_size: int = 64,
                 max_new_tokens: int = 16, split: str = "test") -> dict:
    """Answer the `split` questions of each release with the run's final weights in the three MODES and
    score them (module docstring).  Writes predictions_<mode>.jsonl and vqa_metrics.json to `out_dir`."""
    from xraygpt import builders
    from xraygpt.config import load_config
    from xraygpt.data.datasets import MixedDataset
    from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval, decode_image
    from xraygpt.data.vqa import build_vqa_dataset
    from xraygpt.evaluation.generate import blank_image, generate_fitting, load_samples
    from xraygpt.evaluation.vqa_metrics import format_vqa_metrics, vqa_metrics
    from xraygpt.models.generation import GenerationSettings

    cfg = load_config(run_dir / "config.yaml", [f"model.ckpt={run_dir / 'checkpoints' / 'checkpoint_last.pt'}"])
    model = builders.build_model(cfg.model, seed)
    model.eval()
    processor = MedCLIPImageEval(preprocessing=model.image_preprocessing)
    members = [build_vqa_dataset(f"vqa_{Path(r).name}", str(r), "slake", split, None, None, None, "{question}", 0,
                                 True, 50_000_000, processor, CaptionProcessor()) for r in releases]
    dataset = MixedDataset(members, seed)
    keys = list(range(len(dataset)))
    files, names, kinds = {}, {}, {}
    for key in keys:
        member, index = dataset.locate(key)
        sample = dataset.datasets[member].samples[index]
        files[key] = sample.image
        names[sample.image] = f"{Path(releases[member]).name}/{sample.image.stem}"  # e.g. openi/test_000001
        kinds[sample.sample_id] = _kind_of(Path(releases[member]), split, sample.sample_id)
    other = shuffled_images(list(files.values()), seed)
    encoded: dict[Path, object] = {}

    def image_of(path: Path):
        if path not in encoded:
            encoded[path] = processor(decode_image(path, 50_000_000))
        return encoded[path]

    blank = blank_image(processor, processor.image_size)
    generation = GenerationSettings(max_new_tokens=max_new_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for mode in MODES:
        rows: dict[int, dict] = {}
        for start in range(0, len(keys), 4 * batch_size):
            window = keys[start:start + 4 * batch_size]
            samples = load_samples(dataset, window, "blank" if mode == "blank" else "image", blank)
            for key, sample in zip(window, samples):
                sample["key"] = key
                if mode == "shuffled":
                    sample["pixel_values"] = image_of(other[files[key]])
                sample["image_source"] = {"image": names[files[key]], "shuffled": names[other[files[key]]]}.get(mode, "blank")

            def emit(batch, batch_rows):
                for sample, row in zip(batch, batch_rows):
                    rows[sample["key"]] = {**row, "image": names[files[sample["key"]]], "vqa": sample["vqa"],
                                           **kinds[sample["image_id"]]}

            batch_size = generate_fitting(model, samples, batch_size, emit, generation=generation)
        ordered = [rows[key] for key in keys]
        if mode == "shuffled" and any(r["image_source"] == r["image"] for r in ordered):
            raise AssertionError("a question kept its own image in the shuffled ablation")
        atomic_write_text(out_dir / f"predictions_{mode}.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
        metrics = vqa_metrics(ordered)
        by_kind = {kind: vqa_metrics([r for r in ordered if r["kind"] == kind])["by_language"]
                   for kind in sorted({r["kind"] for r in ordered})}
        results[mode] = {**metrics, "by_kind": by_kind}
        logger.info("VQA with %s images:\n%s", mode, format_vqa_metrics(metrics))
    atomic_write_text(out_dir / "vqa_metrics.json", json.dumps(results, indent=2, ensure_ascii=False))
    return results


def stage0_reading(stage0_run: Path, release: Path, out_file: Path, split: str = "test", seed: int = 0,
                   batch_size: int = 64, max_new_tokens: int = 8) -> dict:
    """Ask the stage-0 LLM of `stage0_run` (its config.yaml and exported hf_model) the closed `split`
    questions of `release` with the image's sided slot words in the slot instead of an image (text
    only, greedy): `<Img>o o reffusion ...</Img> question` -> answer, as stage 0 trained.  This tells a
    miss of the stage-0 LLM's reading from one of the projection (stages 1-2).  Writes and returns
    {"closed": {count, accuracy}, "by_kind": {"kind/finding": {language: {count, accuracy}}}}."""
    from xraygpt.embedded.stage0_reader import Stage0Reader

    slots = json.loads((release / vqa_world.SIDED_SLOTS_FILE).read_text())
    entries = [e for e in json.loads((release / vqa_world.RELEASE_FILES[split]).read_text())
               if str(e["answer_type"]).upper() == "CLOSED"]
    answers, references = Stage0Reader(stage0_run, seed, max_new_tokens).ask(
        [(f"<Img>{slots[Path(e['img_name']).stem]}</Img> {e['question']}", str(e["answer"])) for e in entries], batch_size)
    correct: dict[tuple[str, str], list[bool]] = {}
    for e, answer, reference in zip(entries, answers, references):
        key = (f"{e.get('kind', '?')}/{e.get('finding', '?')}", e["q_lang"])
        correct.setdefault(key, []).append(answer.strip() == reference.strip())
    by_kind: dict[str, dict] = {}
    for (kind, language), hits in sorted(correct.items()):
        by_kind.setdefault(kind, {})[language] = {"count": len(hits), "accuracy": sum(hits) / len(hits)}
    every = [h for hits in correct.values() for h in hits]
    result = {"closed": {"count": len(every), "accuracy": sum(every) / len(every) if every else None},
              "by_kind": by_kind}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_file, json.dumps(result, indent=2, ensure_ascii=False))
    logger.info("stage-0 LLM with the slot words (%s, %d closed questions): %s", release, len(every),
                "; ".join(f"{k} {lang} {v['accuracy']:.3f}" for k, langs in by_kind.items() for lang, v in langs.items()))
    return result


_RELEASE_KINDS: dict[Path, dict[str, dict]] = {}


def _kind_of(release: Path, split: str, sample_id: str) -> dict:
    """{kind, finding} of a question, from its release entry (the extra fields `write_release` adds)."""
    path = release / vqa_world.RELEASE_FILES["val" if split in ("val", "validate") else split]
    if path not in _RELEASE_KINDS:
        _RELEASE_KINDS[path] = {str(e["qid"]): {"kind": e.get("kind", "?"), "finding": e.get("finding", "?")}
                                for e in json.loads(path.read_text())}
    return _RELEASE_KINDS[path][sample_id.split(":", 1)[1]]


def language_figures(result: dict, language: str) -> dict:
    """{closed accuracy per mode, open exact match with the image, counts} of one language of vqa_metrics.json."""
    figures = {}
    for mode in MODES:
        block = result[mode]["by_language"].get(language)
        figures[mode] = block["closed"]["accuracy"] if block else None
    image = result["image"]["by_language"].get(language) or {}
    figures["open_exact"] = image.get("open", {}).get("exact_match")
    figures["closed_count"] = image.get("closed", {}).get("count", 0)
    figures["open_count"] = image.get("open", {}).get("count", 0)
    return figures


def verdict(figures: dict) -> list[str]:
    """The bars one language of one run misses (empty when it clears them)."""
    missed = []
    if figures["image"] is None or figures["image"] < CLOSED_BAR:
        missed.append(f"closed accuracy with the image {figures['image']} < {CLOSED_BAR}")
    if figures["shuffled"] is None or figures["shuffled"] > SHUFFLED_BAR:
        missed.append(f"closed accuracy with shuffled images {figures['shuffled']} > {SHUFFLED_BAR}")
    return missed


def proof_lines(metric_files: list[Path]) -> str:
    """One line per run (vqa_metrics.json) and language: closed accuracy image / shuffled / blank, open
    exact match, the question counts and the bars missed; then whether every bar holds."""
    def fig(v):
        return f"{v:.3f}" if v is not None else "-"

    lines = [f"{'run':<44}{'lang':>5}{'image':>8}{'shuffled':>10}{'blank':>8}{'open EM':>9}{'closed n':>10}"
             f"{'open n':>8}  bars"]
    every = True
    for path in metric_files:
        result = json.loads(path.read_text())
        for language in vqa_world.LANGUAGES:
            f = language_figures(result, language)
            missed = verdict(f)
            every = every and not missed
            lines.append(f"{str(path.parent):<44}{language:>5}{fig(f['image']):>8}{fig(f['shuffled']):>10}"
                         f"{fig(f['blank']):>8}{fig(f['open_exact']):>9}{f['closed_count']:>10}{f['open_count']:>8}  "
                         f"{'; '.join(missed) if missed else 'all met'}")
    lines.append(f"bars: closed accuracy >= {CLOSED_BAR} with the image and <= {SHUFFLED_BAR} with shuffled images, "
                 f"each language: {'every bar met' if every else 'NOT every bar met'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command line
COMMANDS = ("vqa-prepare", "vqa-evaluate", "vqa-stage0-check", "vqa-summary")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The VQA proof's subcommands of `python -m xraygpt.embedded`."""
    p = sub.add_parser("vqa-prepare", help="questions (English and Chinese) and a tiny LLM for the VQA proof")
    p.add_argument("--out", type=Path, required=True, help="the VQA folder to write")
    p.add_argument("--prepared", type=Path, default=Path("dataset/embedded"), help="a folder written by `prepare`")
    p.add_argument("--seed", type=int, default=0, help="the seed `prepare` was given")
    p.add_argument("--prompt-path", default="prompts/alignment.txt")
    p.add_argument("--force", action="store_true")
    e = sub.add_parser("vqa-evaluate", help="closed/open accuracy on held-out questions: image, shuffled, blank")
    e.add_argument("--run", type=Path, required=True, help="a finished stage-1/2 output_dir")
    e.add_argument("--release", type=Path, action="append", required=True, help="a release folder (repeatable)")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-new-tokens", type=int, default=16)
    c = sub.add_parser("vqa-stage0-check", help="the stage-0 LLM asked the held-out closed questions with the slot "
                                                "words in the slot (text only): its reading, apart from the image")
    c.add_argument("--stage0", type=Path, required=True, help="stage 0's output_dir (config.yaml, hf_model)")
    c.add_argument("--release", type=Path, required=True, help="the release with slots_sided.json (vqa/mimic)")
    c.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    c.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("vqa-summary", help="one line per vqa_metrics.json and language, with the bars")
    m.add_argument("metric_files", nargs="+", type=Path)


def run_command(args: argparse.Namespace) -> int:
    """Run one of COMMANDS; returns the exit status (0)."""
    if args.command == "vqa-prepare":
        prepare_vqa(args.out, args.prepared, args.seed, args.prompt_path, args.force)
    elif args.command == "vqa-evaluate":
        evaluate_vqa(args.run, args.release, args.out, seed=args.seed, max_new_tokens=args.max_new_tokens)
    elif args.command == "vqa-stage0-check":
        stage0_reading(args.stage0, args.release, args.out, seed=args.seed)
    else:
        sys.stdout.write(proof_lines(args.metric_files) + "\n")
    return 0
