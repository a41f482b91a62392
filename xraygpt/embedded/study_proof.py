"""The study proof on the embedded default: lateral-only findings and changes against the prior are read.

A sibling of the summary pipeline (`pipeline.py`) and of the VQA proof (`vqa_proof.py`), sharing with
them only the prepared folder's pretrained tiny encoder (`python -m xraygpt.embedded prepare`), which
it pretrains further on both views:

`prepare_study(out, prepared, seed)` writes under `out`:

    mimic/, openi/            each source's study world (`study_world.generate_studies`, generator seeds
                              `seed + 15` and `seed + 16`): studies.jsonl (current studies first, then
                              their priors), images, study_labels.json, study_slots.json
    pool/                     more subjects of the same world (seed + 17), used only as stage 0's text and
                              to pretrain the study encoder
    medclip_tiny/             the study encoder: the prepared tiny encoder's pretraining continued
                              (`assets.continue_tiny_encoder`, ENCODER_STEPS) on the pool's current frontal,
                              lateral and prior frontal images (`encoder_examples`), so its tokens tell the
                              lateral findings as they tell the frontal ones; the prepared encoder never saw a
                              lateral view
    stage0_train.jsonl        stage 0's conversations: the study instruction with each image's slot words
                              in its image slot (`Frontal (PA): <Img>o o effusion ...</Img> Lateral: <Img>...
                              </Img> Prior frontal (PA): <Img>...</Img> question`) -> the study's text; a study
                              recorded without its prior (`study_world.NO_PRIOR_FRACTION`) has no prior slot
                              and its comparison-free text
    llm_tiny/                 a tiny LLaMA whose tokenizer is trained on those texts (each slot item one piece)
    COMPLETE.json             the settings it was prepared with (a rerun with equal ones is skipped)

`evaluate_study(run, split, out)` generates the text of every current study of a held-out split with
a trained run four ways (`MODES`): `image` (frontal + lateral + the study's own prior frontal),
`frontal_only` (the lateral left out; the prior still shown), `no_prior` (frontal + lateral, no prior
image) and `shuffled_prior` (the prior frontal of another subject: a seeded derangement).  It reads
each text back (`study_world.read_study_text`) and writes predictions_<mode>.jsonl and
study_metrics.json: per mode the lateral-only findings' P/R/F1 (`evaluation.clinical.prf`), the
change accuracy, the comparisons written and the current-state accuracy (`study_scores`, `DEFINITIONS`,
also written into study_metrics.json).  The change accuracy scores each of the four frontal findings x
the studies: a stated change (new / resolved / unchanged, or absent: not spoken of) scores 1 when it is
the drawn one and 0 otherwise, whether a prior was shown or not (an invented comparison is scored as
stated); a finding stated present without a comparison ("There is a pleural effusion.") scores 1/2 when
it is new or unchanged (a fair coin between the two changes the statement leaves open) and 0 otherwise.
So a reader who knows the current study exactly and never compares scores `study_world.CHANCE` = 0.5 on
balanced changes, as does one who writes "new" for every present finding.

`stage0_reading(stage0_run, split, out_file)` asks stage 0's LLM the same studies with each image's slot
words in its slot instead of the image (text only; modes `image`, `frontal_only`, `no_prior`) and
scores them the same way: what the LLM itself reads, so that a loss after stages 1-2 can be put on the
LLM or on the images and the projection.  `proof_lines` prints one line per run with the bars
(`verdict`) and that reading when `STAGE0_READING_FILE` lies beside the run's study_metrics.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np

from xraygpt.atomic import atomic_write_text
from xraygpt.embedded import study_world
from xraygpt.embedded.anatomy import FINDINGS
from xraygpt.embedded.lateral import LATERAL_FINDINGS

logger = logging.getLogger(__name__)

STUDY_VERSION = 6  # bump when what prepare_study writes changes
COMPLETE_MARKER = "COMPLETE.json"
SOURCE_SEED_OFFSETS = {"mimic": 15, "openi": 16, "pool": 17}
PROMPT_PATH = "prompts/study_compare_{target}.txt"
STAGE0_READING_FILE = "stage0_reading.json"  # `study-stage0-check`'s output, read beside study_metrics.json
MODES = ("image", "frontal_only", "no_prior", "shuffled_prior")
# The bars (README, "Studies on the embedded default"): lateral-only macro F1 with both views >= LATERAL_BAR
# and >= LATERAL_GAP above the frontal view only; change accuracy with the prior >= CHANGE_BAR, and without
# it and with a shuffled prior at chance (at most CHANCE + CHANCE_MARGIN; without it, also at least
# CHANCE - CHANCE_MARGIN: a model that errs below chance without the prior does not guess, it invents).
LATERAL_BAR, LATERAL_GAP, CHANGE_BAR, CHANCE_MARGIN = 0.85, 0.4, 0.85, 0.1
DEFINITIONS = {
    "change.accuracy": "mean over the 4 frontal findings x the studies of: 1 if the text states the drawn change "
                       "(new / resolved / unchanged by a change word, absent by not speaking of the finding), 1/2 if "
                       "it states the finding present without a comparison and the drawn change is new or unchanged "
                       "(a coin between the two it leaves open), else 0; a comparison is scored as stated whether a "
                       "prior was shown or not. A reader who knows the current study exactly and never compares "
                       "scores 0.5 on balanced changes",
    "change.by_change": "change.accuracy over the pairs of each drawn change",
    "change.comparisons": "(finding, study) pairs the texts state with a change word (new / resolved / unchanged)",
    "change.studies_with_comparison": "studies whose text states at least one change",
    "current.accuracy": "mean over the 4 frontal findings x the studies of: the text's current state (present if "
                        "stated new, unchanged or present; absent if stated resolved or not spoken of) equals the "
                        "drawn current study's",
    "lateral": "P/R/F1 of the two lateral-only findings (a finding negated by no/not/without does not count), "
               "macro_f1 their mean",
}
SLOT_TEXT_REPEATS = (0, 1, 2, 4, 8)
ENCODER_STEPS = 1500  # the prepared encoder's pretraining continued on the pool's frontal and lateral views


def stage0_conversations(split_dir: Path, questions: list[str], seed: int, lateral: bool = True,
                         prior: bool = True) -> list[dict]:
    """One conversation per current study of a study-world split: the study's instruction with each
    image's slot words in its slot, and its text as the answer.  `lateral=False` leaves the lateral
    slot out, `prior=False` the prior's (a study recorded without its prior never has one)."""
    from xraygpt.data.study_prompts import study_instruction
    from xraygpt.prompting import IMAGE_TAG

    slots = json.loads((split_dir / study_world.SLOTS_FILE).read_text())
    records = {r["study_id"]: r for r in map(json.loads, (split_dir / study_world.STUDIES_FILE).read_text().splitlines())}
    texts = {k: r["summary"] for k, r in records.items()}
    rng = random.Random(f"study-stage0:{seed}:{split_dir.name}")
    conversations = []
    for study_id in sorted(slots):
        shown = prior and records[study_id]["prior_study_id"] is not None  # else recorded without it: no prior slot
        views = ["PA", "LATERAL"] if lateral else ["PA"]
        user = study_instruction(views, rng.choice(questions), "", ["PA"] if shown else [], "")
        for role in ("frontal",) + (("lateral",) if lateral else ()) + (("prior",) if shown else ()):
            user = user.replace(IMAGE_TAG, f"<Img>{slots[study_id][role]}</Img>", 1)
        conversations.append({"id": f"{split_dir.parent.name}/{study_id}",
                              "turns": [{"role": "user", "content": user},
                                        {"role": "assistant", "content": texts[study_id]}]})
    return conversations


def encoder_examples(split_dir: Path, preprocessing) -> tuple:
    """A study-world split's images as the tiny encoder's pretraining takes them
    (`assets.continue_tiny_encoder`): every current frontal, lateral and prior frontal, with its findings
    ((N, len(FINDINGS)) 0/1) and slot cells ((N, grid**2) long: 0 for the filler, 1 + the FINDINGS index of
    the finding whose slot word the cell holds).  A lateral finding counts as the frontal finding of its slot
    word (`lateral.LATERAL_SLOT_WORDS`: the retrocardiac nodule as the nodule, the recess effusion as the
    effusion), as stage 0 writes it."""
    import torch
    from PIL import Image

    from xraygpt.data.transforms import MedCLIPImageEval
    from xraygpt.embedded.assets import slot_classes
    from xraygpt.embedded.lateral import LATERAL_SLOT_WORDS

    index = slot_classes()
    as_frontal = {f: FINDINGS[index[word] - 1] for f, word in LATERAL_SLOT_WORDS.items()}
    labels = json.loads((split_dir / study_world.LABELS_FILE).read_text())
    slots = json.loads((split_dir / study_world.SLOTS_FILE).read_text())
    process = MedCLIPImageEval(preprocessing=preprocessing)
    images, targets, cells = [], [], []
    for study, label in labels.items():
        shown = {"frontal": (f"{study}_frontal", label["current"]),
                 "lateral": (f"{study}_lateral", [as_frontal[f] for f in label["lateral"]]),
                 "prior": (f"{study}_prior_frontal", label["prior"])}
        for role, (image_id, findings) in shown.items():
            with Image.open(split_dir / "image" / f"{image_id}.png") as img:
                images.append(process(img))
            targets.append([float(f in findings) for f in FINDINGS])
            cells.append([index[w] for w in slots[study][role].split(" ")])
    return torch.stack(images), torch.tensor(targets), torch.tensor(cells)


def prepare_study(out: Path, prepared: Path, seed: int = 0, num_train: int = 1000, num_pool: int = 3000,
                  num_test: int = 100, force: bool = False,
                  no_prior_fraction: float = study_world.NO_PRIOR_FRACTION,
                  encoder_steps: int = ENCODER_STEPS) -> Path:
    """Write the study worlds, stage 0's conversations, the study encoder and the tiny LLM under `out`
    (module docstring).  `prepared` is a folder written by `python -m xraygpt.embedded prepare`: its
    encoder's pretraining is continued for `encoder_steps` steps on the pool's views (`encoder_examples`)."""
    from xraygpt.constants import DEFAULT_END_SYM, DEFAULT_PROMPT_TEMPLATE
    from xraygpt.data.study_prompts import load_questions
    from xraygpt.embedded.assets import continue_tiny_encoder, write_tiny_llm
    from xraygpt.embedded.vqa_proof import check_slot_tokens

    marker = out / COMPLETE_MARKER
    settings = {"version": STUDY_VERSION, "seed": seed, "prepared": str(prepared.resolve()), "num_train": num_train,
                "num_pool": num_pool, "num_test": num_test, "no_prior_fraction": no_prior_fraction,
                "encoder_steps": encoder_steps}
    if marker.is_file() and not force and json.loads(marker.read_text()) == settings:
        logger.info("study proof already prepared in %s", out)
        return out
    if not (prepared / "medclip_tiny").is_dir():
        raise FileNotFoundError(f"{prepared} has no medclip_tiny/ (run `python -m xraygpt.embedded prepare` first)")
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    sizes = {"mimic": (num_train, 16, num_test), "openi": (max(1, num_train // 3), 16, num_test), "pool": (num_pool, 0, 0)}
    for source, (train, val, test) in sizes.items():
        study_world.generate_studies(out / source, train, val, test, seed + SOURCE_SEED_OFFSETS[source],
                                     no_prior_fraction=no_prior_fraction)
    continue_tiny_encoder(prepared / "medclip_tiny", out / "medclip_tiny",
                          lambda preprocessing: encoder_examples(out / "pool" / "train", preprocessing),
                          encoder_steps, seed)
    questions = load_questions(PROMPT_PATH, "summary")
    conversations = [c for source in ("mimic", "pool")
                     for c in stage0_conversations(out / source / "train", questions, seed)]
    atomic_write_text(out / "stage0_train.jsonl", "".join(json.dumps(c) + "\n" for c in conversations))
    texts = ["".join(DEFAULT_PROMPT_TEMPLATE.format(c["turns"][0]["content"]) + c["turns"][1]["content"] + DEFAULT_END_SYM)
             for c in conversations]
    for source in ("mimic", "openi"):
        rows = (out / source / "train" / study_world.STUDIES_FILE).read_text().splitlines()
        texts += [json.loads(r)["summary"] for r in rows]
    slots = {f"{k}:{role}": v[role] for k, v in json.loads((out / "mimic" / "train" / study_world.SLOTS_FILE).read_text()).items()
             for role in ("frontal", "lateral", "prior")}
    for repeats in SLOT_TEXT_REPEATS:  # the slot texts again, more often, until every slot item is one piece
        write_tiny_llm(out / "llm_tiny", texts + list(slots.values()) * repeats, seed)
        if not check_slot_tokens(out / "llm_tiny", slots):
            break
    atomic_write_text(marker, json.dumps(settings))
    return out


# ---------------------------------------------------------------------------------------------- evaluation
def derangement(n: int, seed: int) -> list[int]:
    """index -> another index (a seeded cyclic shift of a shuffled order; needs n >= 2)."""
    if n < 2:
        raise ValueError("shuffling priors needs at least two studies")
    order = list(range(n))
    random.Random(f"study-shuffle:{seed}").shuffle(order)
    other = [0] * n
    for position, index in enumerate(order):
        other[index] = order[(position + 1) % n]
    return other


def study_scores(predictions: list[str], labels: list[dict]) -> dict:
    """Lateral-only P/R/F1 (per finding, macro), change accuracy (overall, per drawn change), the
    comparisons written and the current-state accuracy of texts (module docstring, `DEFINITIONS`)."""
    from xraygpt.evaluation.clinical import prf

    read = [study_world.read_study_text(p) for p in predictions]
    counts = np.zeros((len(LATERAL_FINDINGS), 3))
    for (_, said), label in zip(read, labels):
        for k, finding in enumerate(LATERAL_FINDINGS):
            truth = finding in label["lateral"]
            counts[k] += [truth and finding in said, finding in said and not truth, truth and finding not in said]
    precision, recall, f1 = prf(counts[:, 0], counts[:, 1], counts[:, 2])
    per = {f: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
               "support": int(counts[k, 0] + counts[k, 2])} for k, f in enumerate(LATERAL_FINDINGS)}
    right = {c: [0.0, 0] for c in study_world.CHANGES}
    compared, comparing_studies, current_right = 0, 0, 0
    there_now = ("new", "unchanged")  # the drawn changes whose current study shows the finding
    for (changes, _), label in zip(read, labels):
        said = [changes[f] for f in FINDINGS if changes[f] in study_world.COMPARISONS]
        compared += len(said)
        comparing_studies += bool(said)
        for finding in FINDINGS:
            truth, stated = label["changes"][finding], changes[finding]
            if stated == study_world.PRESENT:  # no comparison: half of new-or-unchanged (module docstring)
                right[truth][0] += 0.5 if truth in there_now else 0.0
            else:
                right[truth][0] += stated == truth
            right[truth][1] += 1
            current_right += (stated in there_now or stated == study_world.PRESENT) == (truth in there_now)
    total = sum(n for _, n in right.values())
    return {"lateral": {"per_finding": per, "macro_f1": float(np.mean(f1))},
            "change": {"accuracy": sum(r for r, _ in right.values()) / total if total else 0.0,
                       "by_change": {c: (r / n if n else None) for c, (r, n) in right.items()}, "pairs": total,
                       "comparisons": compared, "studies_with_comparison": comparing_studies},
            "current": {"accuracy": current_right / total if total else 0.0, "pairs": total},
            "studies": len(predictions)}


def evaluate_study(run_dir: Path, split_dir: Path, out_dir: Path, seed: int = 0, batch_size: int = 50,
                   max_new_tokens: int = 80) -> dict:
    """Generate every current study of `split_dir` with the run's final weights in the four MODES, score
    them (module docstring) and write predictions_<mode>.jsonl and study_metrics.json to `out_dir`."""
    import torch

    from xraygpt import builders
    from xraygpt.config import load_config
    from xraygpt.data.study_dataset import build_study_dataset
    from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval
    from xraygpt.evaluation.generate import generate_fitting
    from xraygpt.models.generation import GenerationSettings

    cfg = load_config(run_dir / "config.yaml", [f"model.ckpt={run_dir / 'checkpoints' / 'checkpoint_last.pt'}"])
    model = builders.build_model(cfg.model, seed)
    model.eval()
    processor = MedCLIPImageEval(preprocessing=model.image_preprocessing)
    labels = json.loads((split_dir / study_world.LABELS_FILE).read_text())
    count = len(labels)

    def dataset(max_images: int, use_prior: bool):
        return build_study_dataset("studies", str(split_dir), processor, CaptionProcessor(), "studies", None, None,
                                   PROMPT_PATH, "summary", max_images, use_prior, False, False, count, False,
                                   50_000_000, "en")

    full = dataset(2, True)
    ids = [r.study_id for r in full.records]
    if ids != sorted(labels):
        raise ValueError(f"{split_dir}: the first {count} studies of {study_world.STUDIES_FILE} are not the labelled ones")
    if any(r.prior_study_id is None for r in full.records):  # the shuffled ablation swaps the last image
        raise ValueError(f"{split_dir}: every held-out study must have its prior (a test split, generated with none "
                         "left without)")
    question = full.instructions[0]
    other = derangement(count, seed)
    generation = GenerationSettings(max_new_tokens=max_new_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for mode in MODES:
        data = {"frontal_only": lambda: dataset(1, True), "no_prior": lambda: dataset(2, False)}.get(mode, lambda: full)()
        samples = [data.get(i, random.Random(i), instruction=question) for i in range(count)]
        for i, sample in enumerate(samples):
            sample["key"], sample["image_source"] = i, sample["image_ids"][-1] if mode != "no_prior" else "none"
        if mode == "shuffled_prior":
            priors = [s["pixel_values"][-1] for s in samples]
            for i, sample in enumerate(samples):
                sample["pixel_values"] = torch.cat([sample["pixel_values"][:-1], priors[other[i]][None]])
                sample["image_source"] = samples[other[i]]["image_ids"][-1]
        rows: dict[int, dict] = {}

        def emit(batch, batch_rows):
            for sample, row in zip(batch, batch_rows):
                rows[sample["key"]] = {**row, "views": sample["views"]}

        batch_size = generate_fitting(model, samples, batch_size, emit, generation=generation)
        ordered = [rows[i] for i in range(count)]
        if mode == "shuffled_prior" and any(r["image_source"] == f"{r['image_id']}_prior_frontal" for r in ordered):
            raise AssertionError("a study kept its own prior in the shuffled ablation")
        atomic_write_text(out_dir / f"predictions_{mode}.jsonl", "".join(json.dumps(r) + "\n" for r in ordered))
        results[mode] = study_scores([r["prediction"] for r in ordered], [labels[r["image_id"]] for r in ordered])
        logger.info("studies, %s: lateral-only macro F1 %.3f, change accuracy %.3f, comparisons written %d, "
                    "current-state accuracy %.3f", mode, results[mode]["lateral"]["macro_f1"],
                    results[mode]["change"]["accuracy"], results[mode]["change"]["comparisons"],
                    results[mode]["current"]["accuracy"])
    results["chance"] = study_world.CHANCE
    results["definitions"] = DEFINITIONS
    atomic_write_text(out_dir / "study_metrics.json", json.dumps(results, indent=2))
    return results


def stage0_reading(stage0_run: Path, split_dir: Path, out_file: Path, seed: int = 0, batch_size: int = 50,
                   max_new_tokens: int = 80) -> dict:
    """Stage 0's LLM asked every current study of `split_dir` with the slot words in its image slots (text
    only, greedy, the evaluation's question: the prompt file's first) in the MODES but the shuffled one:
    how well the LLM itself reads the lateral findings and the changes, apart from the images and the
    projection.  Scores each mode as `evaluate_study` does (`study_scores`) and writes them to `out_file`
    (JSON; README, "Studies on the embedded default")."""
    from xraygpt.data.study_prompts import load_questions
    from xraygpt.embedded.stage0_reader import Stage0Reader

    reader = Stage0Reader(stage0_run, seed, max_new_tokens)
    labels = json.loads((split_dir / study_world.LABELS_FILE).read_text())
    question = load_questions(PROMPT_PATH, "summary")[:1]
    result = {}
    for mode, lateral, prior in (("image", True, True), ("frontal_only", False, True), ("no_prior", True, False)):
        asked = [(c["id"].split("/", 1)[1], c["turns"]) for c in
                 stage0_conversations(split_dir, question, seed, lateral=lateral, prior=prior)]
        asked = [(study_id, turns) for study_id, turns in asked if study_id in labels]
        predictions, _ = reader.ask([(t[0]["content"], t[1]["content"]) for _, t in asked], batch_size)
        result[mode] = study_scores(predictions, [labels[study_id] for study_id, _ in asked])
    result["definitions"] = DEFINITIONS
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_file, json.dumps(result, indent=2))
    logger.info("stage-0 LLM with the slot words (%s): lateral-only macro F1 %.3f (frontal only %.3f), change "
                "accuracy %.3f (no prior %.3f)", split_dir, result["image"]["lateral"]["macro_f1"],
                result["frontal_only"]["lateral"]["macro_f1"], result["image"]["change"]["accuracy"],
                result["no_prior"]["change"]["accuracy"])
    return result


def verdict(result: dict) -> list[str]:
    """The bars one study_metrics.json misses (empty when it clears them all)."""
    both, frontal = result["image"]["lateral"]["macro_f1"], result["frontal_only"]["lateral"]["macro_f1"]
    change = {mode: result[mode]["change"]["accuracy"] for mode in ("image", "no_prior", "shuffled_prior")}
    ceiling = result.get("chance", study_world.CHANCE) + CHANCE_MARGIN
    floor = result.get("chance", study_world.CHANCE) - CHANCE_MARGIN
    missed = []
    if both < LATERAL_BAR:
        missed.append(f"lateral F1 {both:.3f} < {LATERAL_BAR}")
    if both - frontal < LATERAL_GAP:
        missed.append(f"lateral F1 only {both - frontal:.3f} above frontal-only")
    if change["image"] < CHANGE_BAR:
        missed.append(f"change accuracy {change['image']:.3f} < {CHANGE_BAR}")
    for mode in ("no_prior", "shuffled_prior"):
        if change[mode] > ceiling:
            missed.append(f"{mode} change accuracy {change[mode]:.3f} > {ceiling:.2f}")
    if change["no_prior"] < floor:
        missed.append(f"no_prior change accuracy {change['no_prior']:.3f} < {floor:.2f}")
    return missed


def proof_lines(metric_files: list[Path]) -> str:
    """One line per run (study_metrics.json): lateral-only macro F1 with both views / the frontal only,
    change accuracy with the prior / without / with a shuffled prior, and the bars missed."""
    lines = [f"{'run':<44}{'lat F1 both':>12}{'frontal':>9}{'change prior':>14}{'no prior':>10}{'shuffled':>10}"
             f"{'no prior: compared':>20}{'current':>9}{'stage 0: lat F1':>17}{'change':>8}  bars"]
    every = True
    for path in metric_files:
        r = json.loads(path.read_text())
        reading = path.parent / STAGE0_READING_FILE
        words = json.loads(reading.read_text()) if reading.is_file() else None
        missed = verdict(r)
        every = every and not missed
        lines.append(f"{str(path.parent):<44}{r['image']['lateral']['macro_f1']:>12.3f}"
                     f"{r['frontal_only']['lateral']['macro_f1']:>9.3f}{r['image']['change']['accuracy']:>14.3f}"
                     f"{r['no_prior']['change']['accuracy']:>10.3f}{r['shuffled_prior']['change']['accuracy']:>10.3f}"
                     f"{r['no_prior']['change'].get('comparisons', float('nan')):>20}"
                     f"{r['no_prior'].get('current', {}).get('accuracy', float('nan')):>9.3f}"
                     f"{words['image']['lateral']['macro_f1'] if words else float('nan'):>17.3f}"
                     f"{words['image']['change']['accuracy'] if words else float('nan'):>8.3f}  "
                     f"{'; '.join(missed) if missed else 'all met'}")
    lines.append(f"bars: lateral F1 >= {LATERAL_BAR} and >= {LATERAL_GAP} above frontal-only; change accuracy >= "
                 f"{CHANGE_BAR} with the prior, <= {study_world.CHANCE + CHANCE_MARGIN:.2f} without it and shuffled, "
                 f">= {study_world.CHANCE - CHANCE_MARGIN:.2f} without it (chance {study_world.CHANCE}): "
                 f"{'every bar met' if every else 'NOT every bar met'}; without the prior, 'compared': (finding, "
                 f"study) pairs stated with a change word (not a bar, expected 0), 'current': current-state accuracy; "
                 f"'stage 0': the stage-0 LLM given the slot words instead of the images ({STAGE0_READING_FILE}, "
                 f"not a bar; nan when absent)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command line
COMMANDS = ("study-prepare", "study-evaluate", "study-stage0-check", "study-summary")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The study proof's subcommands of `python -m xraygpt.embedded`."""
    p = sub.add_parser("study-prepare", help="the study world (two views, a prior) and a tiny LLM for the study proof")
    p.add_argument("--out", type=Path, required=True, help="the study folder to write")
    p.add_argument("--prepared", type=Path, default=Path("dataset/embedded"), help="a folder written by `prepare`")
    p.add_argument("--seed", type=int, default=0, help="the seed `prepare` was given")
    p.add_argument("--num-train", type=int, default=1000, help="training subjects of the mimic source")
    p.add_argument("--num-pool", type=int, default=3000, help="more subjects, stage 0's text only")
    p.add_argument("--num-test", type=int, default=100, help="held-out subjects per source")
    p.add_argument("--no-prior-fraction", type=float, default=study_world.NO_PRIOR_FRACTION,
                   help="training subjects recorded without their prior (comparison-free text)")
    p.add_argument("--encoder-steps", type=int, default=ENCODER_STEPS,
                   help="steps of the prepared encoder's further pretraining on the pool's frontal and lateral views")
    p.add_argument("--force", action="store_true")
    e = sub.add_parser("study-evaluate", help="lateral-only F1 and change accuracy: both views, frontal only, "
                                              "no prior, shuffled prior")
    e.add_argument("--run", type=Path, required=True, help="a finished stage-1/2 output_dir")
    e.add_argument("--split", type=Path, required=True, help="a study-world split folder (study_labels.json)")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-new-tokens", type=int, default=80)
    c = sub.add_parser("study-stage0-check", help="the stage-0 LLM asked the held-out studies with the slot words "
                                                  "in the image slots (text only): its reading, apart from the images")
    c.add_argument("--stage0", type=Path, required=True, help="stage 0's output_dir (config.yaml, hf_model)")
    c.add_argument("--split", type=Path, required=True, help="a study-world split folder (study_slots.json)")
    c.add_argument("--out", type=Path, required=True, help=f"the JSON file to write (the proof: {STAGE0_READING_FILE} "
                                                             "beside study_metrics.json)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-new-tokens", type=int, default=80)
    m = sub.add_parser("study-summary", help="one line per study_metrics.json, with the bars")
    m.add_argument("metric_files", nargs="+", type=Path)


def run_command(args: argparse.Namespace) -> int:
    """Run one of COMMANDS; returns the exit status (0)."""
    if args.command == "study-prepare":
        prepare_study(args.out, args.prepared, args.seed, args.num_train, args.num_pool, args.num_test, args.force,
                      args.no_prior_fraction, args.encoder_steps)
    elif args.command == "study-evaluate":
        evaluate_study(args.run, args.split, args.out, seed=args.seed, max_new_tokens=args.max_new_tokens)
    elif args.command == "study-stage0-check":
        stage0_reading(args.stage0, args.split, args.out, seed=args.seed, max_new_tokens=args.max_new_tokens)
    else:
        sys.stdout.write(proof_lines(args.metric_files) + "\n")
    return 0
