"""Record what single-image training and evaluation compute, to prove a change leaves them untouched.

    python scripts/single_image_reference.py --out tests/data/single_image_reference.json

Builds small local inputs in a temporary folder (no download): a deterministic image-summary
dataset written here (24 train / 8 val PNGs of seeded shapes, captions from a fixed list), the tiny
MedCLIP-format encoder (random weights, seed 0) and the tiny 2-layer LLaMA + SentencePiece
tokenizer of `xraygpt.embedded.assets` (tokenizer trained on this dataset's conversations).  The
data are written here rather than taken from the embedded generator so that a change of the
synthetic world (issue 15 item 4) does not change them.  `inputs` records the sha256 of every
input file, so a change of the asset factory shows as "inputs differ", not as a changed result.

Then runs, in this process, the SHIPPED configs with only paths and sizes overridden:
- `train_configs/stage1.yaml` (dataset `mimic`) for 3 steps of batch 4, then
- `train_configs/stage2.yaml` (dataset `openi`) for 3 steps from stage 1's checkpoint, then
- `eval_configs/eval_mimic.yaml` on the val split with stage 2's checkpoint (8 new tokens),

and records for every training micro-batch the sha256, shape and dtype of each tensor of the
collated batch (and its key set and id list), the loss of every step (log.jsonl, full precision)
and of every forward, the trained projection's sha256, samples.jsonl, and for evaluation the
sha256 of every tensor given to `XrayGPT.generate`, the predictions and metrics.json's headline.

The reference JSON committed beside the test (tests/data/single_image_reference.json) was made
with this script at commit a278db6 (before issue 15's multi-image model changes);
`tests/test_study_training.py` recomputes it and compares exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xraygpt import runtime  # noqa: E402

runtime.offline_environment()

import torch  # noqa: E402

CAPTIONS = (
    "The heart size is normal. The lungs are clear. No pleural effusion.",
    "Mild cardiomegaly. Small left pleural effusion. No pneumothorax.",
    "Right lower lobe opacity concerning for pneumonia. No effusion.",
    "Lungs are hyperinflated. No focal consolidation. Heart size normal.",
    "Moderate pulmonary edema with bilateral pleural effusions.",
    "Left upper lobe nodule. The cardiomediastinal silhouette is normal.",
    "No acute cardiopulmonary process.",
    "Endotracheal tube in place. Bibasilar atelectasis. No pneumothorax.",
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(t: torch.Tensor) -> dict:
    t = t.detach().cpu().contiguous()
    return {"shape": list(t.shape), "dtype": str(t.dtype), "sha256": sha256_bytes(t.numpy().tobytes())}


def batch_digest(batch: dict) -> dict:
    """{key: tensor digest, or the JSON of a non-tensor value} for every key of a batch, sorted."""
    return {key: tensor_digest(value) if torch.is_tensor(value) else json.loads(json.dumps(value, default=str))
            for key, value in sorted(batch.items())}


def write_split(folder: Path, count: int, seed: int) -> None:
    """`count` 112-pixel grey PNGs of seeded ellipses and bars + filter_cap.json (xraygpt layout)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (folder / "image").mkdir(parents=True, exist_ok=True)
    annotations = []
    for k in range(count):
        image = Image.new("L", (112, 112), rng.randrange(20, 60))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randrange(2, 6)):
            x, y = rng.randrange(0, 90), rng.randrange(0, 90)
            draw.ellipse((x, y, x + rng.randrange(8, 30), y + rng.randrange(8, 30)), fill=rng.randrange(80, 250))
        image_id = f"{seed}_{k}"
        image.save(folder / "image" / f"{image_id}.png")
        annotations.append({"image_id": image_id, "caption": CAPTIONS[rng.randrange(len(CAPTIONS))]})
    (folder / "filter_cap.json").write_text(json.dumps({"annotations": annotations}, indent=1))


def build_inputs(root: Path) -> dict:
    """The dataset, encoder and LLM folders under `root`; returns their paths."""
    from xraygpt.embedded.assets import conversation_texts, write_tiny_encoder, write_tiny_llm
    from xraygpt.prompting import load_instructions

    write_split(root / "data" / "train", 24, seed=1)
    write_split(root / "data" / "val", 8, seed=2)
    write_tiny_encoder(root / "encoder", seed=0)
    instructions = load_instructions(REPO / "prompts" / "alignment.txt")
    captions = [a["caption"] for a in json.loads((root / "data" / "train" / "filter_cap.json").read_text())["annotations"]]
    write_tiny_llm(root / "llm", conversation_texts(captions * 4, instructions, random.Random(0)), seed=0)
    return {"train": root / "data" / "train", "val": root / "data" / "val", "encoder": root / "encoder",
            "swin_config": root / "encoder" / "swin_config.json", "llm": root / "llm"}


def file_digest(path: Path) -> str:
    """sha256 of a file; of a SentencePiece model, of its pieces and scores (the file also records the
    temporary folder it was trained in)."""
    if path.name != "tokenizer.model":
        return sha256_bytes(path.read_bytes())
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    return sha256_bytes(json.dumps([(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]).encode())


def input_fingerprint(root: Path) -> dict:
    """`file_digest` of every file under `root` (relative path -> hash)."""
    return {p.relative_to(root).as_posix(): file_digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def model_options(paths: dict) -> list[str]:
    return [f"model.encoder.checkpoint={paths['encoder']}", f"model.encoder.swin_config={paths['swin_config']}",
            "model.encoder.projection_dim=64", f"model.llm.path={paths['llm']}", "model.llm.dtype=float32",
            "model.prompt.max_txt_len=64"]


def run_options(out: Path) -> list[str]:
    return [f"run.output_dir={out}", "run.max_epoch=1", "run.iters_per_epoch=3", "run.batch_size_train=4",
            "run.num_workers=0", "run.log_freq=1", "run.save_freq_steps=0", "run.sample_generations=2",
            "run.max_new_tokens=8", "run.init_lr=3e-3", "run.lr_sched.warmup_steps=1", "run.lr_sched.warmup_lr=1e-4",
            "run.lr_sched.min_lr=1e-4", "run.device=cpu", "run.amp=false"]


def train_record(cfg_path: Path, options: list[str]) -> dict:
    """Train with the shipped config + `options`; batch digests, losses, projection hash, samples."""
    from xraygpt import builders
    from xraygpt.training import tasks

    batches, forward_losses = [], []
    original = tasks.ImageTextPretrainTask.train_step

    def recording_step(self, model, batch):
        batches.append(batch_digest(batch))
        out = original(self, model, batch)
        forward_losses.append(float(out["loss"].detach()))
        return out

    tasks.ImageTextPretrainTask.train_step = recording_step
    try:
        _, cfg = builders.load_job_config(cfg_path, options, job="training")
        dist = builders.build_distributed(cfg)
        model = builders.build_model(cfg.model, cfg.run.seed)
        train_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "train", model.prompt_tokenizer,
                                            model.image_preprocessing)
        eval_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "eval", model.prompt_tokenizer,
                                           model.image_preprocessing)
        result = builders.build_runner(cfg, model, train_set, eval_set, dist).train()
    finally:
        tasks.ImageTextPretrainTask.train_step = original
    out = Path(cfg.run.output_dir)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    weights = builders.read_trainable_weights(result["checkpoint"])
    return {
        "batches": batches,
        "forward_losses": forward_losses,
        "step_losses": [row["loss"] for row in log if "loss" in row],
        "trained_weights": {k: tensor_digest(v) for k, v in sorted(weights.items())},
        "samples": [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()],
        "checkpoint": result["checkpoint"],
    }


def eval_record(options: list[str]) -> dict:
    """evaluate.py's library path on the shipped MIMIC evaluation config + `options`."""
    import evaluate
    from xraygpt import builders
    from xraygpt.models.xraygpt import XrayGPT

    calls = []
    original = XrayGPT.generate

    def recording_generate(self, *args, **kwargs):
        names = ("pixel_values", "input_ids", "attention_mask")
        given = {**dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k != "generation"}}
        calls.append(batch_digest(given))
        return original(self, *args, **kwargs)

    XrayGPT.generate = recording_generate
    try:
        _, cfg = builders.load_job_config(REPO / "eval_configs" / "eval_mimic.yaml", options, job="evaluation")
        evaluate.evaluate(cfg)
    finally:
        XrayGPT.generate = original
    out = Path(cfg.evaluation.output_dir)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    return {"generate_calls": calls,
            "predictions": [{k: r[k] for k in ("image_id", "instruction", "prediction", "reference")} for r in rows],
            "headline": metrics["headline"]}


def compute(workdir: Path) -> dict:
    """The whole record (module docstring), built under `workdir`."""
    torch.set_num_threads(1)
    paths = build_inputs(workdir / "inputs")
    record = {"inputs": input_fingerprint(workdir / "inputs")}
    data = [f"datasets.{{name}}.root={paths['train']}", f"datasets.{{name}}.eval_root={paths['val']}"]
    stage1 = train_record(REPO / "train_configs" / "stage1.yaml",
                          model_options(paths) + [d.format(name="mimic") for d in data]
                          + run_options(workdir / "stage1"))
    stage2 = train_record(REPO / "train_configs" / "stage2.yaml",
                          model_options(paths) + [f"model.ckpt={stage1.pop('checkpoint')}"]
                          + [d.format(name="openi") for d in data] + run_options(workdir / "stage2"))
    evaluation = eval_record(model_options(paths) + [
        f"model.ckpt={stage2.pop('checkpoint')}", f"datasets.mimic.root={paths['val']}",
        f"evaluation.output_dir={workdir / 'eval'}", "evaluation.batch_size=4", "evaluation.max_new_tokens=8",
        "evaluation.bootstrap_resamples=0", "evaluation.device=cpu", "evaluation.progress=false"])
    record.update(stage1=stage1, stage2=stage2, evaluation=evaluation)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the reference JSON goes")
    args = parser.parse_args(argv)
    runtime.setup_logging(0)
    with tempfile.TemporaryDirectory() as tmp:
        record = compute(Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
