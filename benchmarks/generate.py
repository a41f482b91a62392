"""Summary generation throughput, images/s and output tokens/s: batched vs one image at a time.

    python benchmarks/generate.py [--images N] [--batch-size B] [--max-new-tokens T] [--rounds R]
                                  [--threads K] [--cfg-path eval_configs/tiny_eval.yaml]

By default a tiny CPU model is built in a temporary folder the way the tests build theirs
(synthetic images, a small MedCLIP-format Swin and a 2-layer LLaMA with a SentencePiece
tokenizer, random weights: every summary runs to T tokens, so both modes do the same work).
With `--cfg-path` the model and split of an evaluation config are used instead (e.g. the
trained embedded default after the quickstart, whose summaries stop at the end symbol).
The same N images go through `xraygpt.evaluation.generate.generate_fitting` both ways (the
evaluator's path: prompt-length order, left padding, KV cache), greedy, after one warm-up batch
each, R rounds alternating the order; prints the median images/s and output tokens/s side by
side, the speed-up and whether the outputs match.  Output tokens are those the LLM returned
before each row's padding (its end symbol included).  Torch runs K threads (default 1, so that on a
shared machine the comparison measures batching rather than thread scheduling).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluate import evaluated_splits, load_eval_config  # noqa: E402
from xraygpt import builders  # noqa: E402
from xraygpt.config import validate  # noqa: E402
from xraygpt.conversation import load_instructions  # noqa: E402
from xraygpt.data.synthetic import generate_dataset  # noqa: E402
from xraygpt.embedded import conversation_texts, write_tiny_encoder, write_tiny_llm  # noqa: E402
from xraygpt.evaluation.generate import generate_fitting, generate_rows, load_samples  # noqa: E402


def tiny_config(folder: Path, images: int) -> dict:
    """A random tiny model and a synthetic split of `images` images under `folder`, as an evaluation config."""
    generate_dataset(folder / "data", num_train=32, num_val=0, num_test=images, seed=0, image_size=112)
    write_tiny_encoder(folder / "encoder", seed=0)
    captions = [a["caption"] for a in json.loads((folder / "data" / "train" / "filter_cap.json").read_text())["annotations"]]
    prompts = REPO / "prompts" / "alignment.txt"
    write_tiny_llm(folder / "llm", conversation_texts(captions, load_instructions(prompts), random.Random(0)), seed=0)
    return {
        "model": {"arch": "xraygpt",
                  "encoder": {"checkpoint": str(folder / "encoder"), "swin_config": str(folder / "encoder" / "swin_config.json"),
                              "projection_dim": 64},
                  "llm": {"path": str(folder / "llm"), "dtype": "float32"}},
        "datasets": {"openi": {"root": str(folder / "data" / "test"), "prompt_path": str(prompts),
                               "vis_processor": {"eval": {"name": "medclip_image_eval", "image_size": 112}}}},
    }


class TokenCounter:
    """Wraps `llm.generate` to count the tokens it returns per row, up to the row's padding."""

    def __init__(self, llm):
        self.llm, self.generate, self.tokens = llm, llm.generate, 0
        llm.generate = self

    def __call__(self, *args, **kwargs):
        out = self.generate(*args, **kwargs)
        self.tokens += int((out != kwargs["pad_token_id"]).sum())
        return out


def timed(model, samples: list[dict], batch_size: int, max_new_tokens: int, counter: TokenCounter
          ) -> tuple[float, int, dict[str, str]]:
    """(seconds, output tokens, {image_id: prediction}) for `samples` in batches of `batch_size`, after one warm-up batch."""
    generate_rows(model, samples[:batch_size], max_new_tokens=max_new_tokens)
    preds = {}
    counter.tokens = 0
    start = time.perf_counter()
    generate_fitting(model, samples, batch_size,
                     lambda batch, rows: preds.update((r["image_id"], r["prediction"]) for r in rows),
                     max_new_tokens=max_new_tokens)
    return time.perf_counter() - start, counter.tokens, preds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=80, help="as eval_configs/tiny_eval.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cfg-path", default=None, help="an evaluation config whose model and split are used")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cfg_path:
            cfg = load_eval_config(args.cfg_path)
            source = args.cfg_path
        else:
            cfg = validate(OmegaConf.create(tiny_config(Path(tmp), args.images)), required=("model", "datasets"))
            source = "tiny random model (2-layer LLaMA, small Swin), synthetic images"
        model = builders.build_model(cfg.model, 0).eval()
        dataset = builders.build_datasets(evaluated_splits(cfg), 0, "eval", model.prompt_tokenizer)
        samples = load_samples(dataset, list(range(min(args.images, len(dataset)))))
        counter = TokenCounter(model.llm)
        times: dict[int, list[float]] = {1: [], args.batch_size: []}
        tokens, outputs = {}, {}
        for r in range(args.rounds):
            for size in (1, args.batch_size) if r % 2 == 0 else (args.batch_size, 1):
                seconds, tokens[size], outputs[size] = timed(model, samples, size, args.max_new_tokens, counter)
                times[size].append(seconds)
    n = len(samples)
    single_s, batched_s = statistics.median(times[1]), statistics.median(times[args.batch_size])
    sys.stdout.write(
        f"{source}: {n} images, greedy, max_new_tokens {args.max_new_tokens}, {torch.get_num_threads()} torch thread(s), "
        f"median of {args.rounds} rounds\n"
        f"{'mode':<22}{'images/s':>10}{'tokens/s':>10}{'seconds':>10}\n"
        f"{'one at a time':<22}{n / single_s:>10.2f}{tokens[1] / single_s:>10.1f}{single_s:>10.2f}\n"
        f"{f'batched ({args.batch_size})':<22}{n / batched_s:>10.2f}"
        f"{tokens[args.batch_size] / batched_s:>10.1f}{batched_s:>10.2f}\n"
        f"speed-up {single_s / batched_s:.1f}x; output tokens {tokens[1]} vs {tokens[args.batch_size]}; "
        f"outputs identical: {'yes' if outputs[1] == outputs[args.batch_size] else 'no'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
