"""Summary generation throughput, images/s and output tokens/s: batched vs one image at a time.

    python benchmarks/generate.py [--size tiny|7b | --cfg-path eval_configs/tiny_eval.yaml] [--images N]
                                  [--batch-size B] [--single-images K] [--max-new-tokens T] [--rounds R]
                                  [--threads K] [--vllm] [--captions filter_cap.json]

Models (random weights unless --cfg-path; nothing is downloaded):
  tiny        built in a temporary folder the way the tests build theirs: synthetic 112-px images, a
              small MedCLIP-format Swin and a 2-layer LLaMA with a SentencePiece tokenizer (CPU)
  7b          train_step.py's LLaMA-7B shape, bf16 weights created on the GPU, the full-size MedCLIP
              Swin-T on synthetic 224-px images, a tokenizer trained on the summaries of --captions
              (../shared's OpenI sample by default; synthetic ones without it); refused without CUDA
  --cfg-path  the model and split of an evaluation config (e.g. the trained embedded default after
              the quickstart, whose summaries stop at the end symbol)
A random LLM rarely writes the end symbol, so its summaries run to T tokens in both modes.

Modes, timed in one run, R rounds alternating the order, after one warm-up batch each (medians):
  one at a time  the first K images (default: all N), batches of 1
  batched (B)    all N images in batches of B
  vllm           with --vllm (tiny or --cfg-path: vLLM loads the LLM folder, which the random 7b has
                 not): all N in one call through evaluation.backend vllm's engine (vLLM's
                 prompt_embeds input); the row says "skipped" when vLLM or a GPU is missing
Every mode goes through `xraygpt.evaluation.generate.generate_fitting` (the evaluator's path:
prompt-length order, left padding, KV cache), greedy, on the GPU when there is one.  Output
tokens are the ids the LLM returned other than the pad id (end symbols included).  Printed:
images/s, output tokens/s, seconds, peak GPU memory of this process on CUDA (vLLM's engine runs in
its own: not shown); the speed-up in images/s over one at a time; whether the greedy outputs of
the K images done both ways match.  Torch runs K threads on CPU (default 1, so
that on a shared machine the comparison measures batching rather than thread scheduling).
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

from xraygpt.builders import evaluated_splits, load_eval_config  # noqa: E402
from xraygpt import builders  # noqa: E402
from xraygpt.config import validate  # noqa: E402
from xraygpt.embedded.assets import conversation_texts, write_tiny_encoder, write_tiny_llm  # noqa: E402
from xraygpt.embedded.dataset import generate_dataset  # noqa: E402
from xraygpt.evaluation.generate import generate_fitting, generate_rows, load_samples  # noqa: E402
from xraygpt.evaluation.vllm_engine import VLLMEngine, VLLMRefused  # noqa: E402
from xraygpt.models.generation import GenerationSettings  # noqa: E402
from xraygpt.prompting import load_instructions  # noqa: E402


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
    """Counts the output tokens of every `generate` it is attached to (transformers: ids other than the pad id)."""

    def __init__(self):
        self.tokens = 0

    def attach(self, owner, count) -> None:
        """Wrap `owner.generate` so that `count(output, kwargs)` of each call is added up."""
        generate = owner.generate

        def counted(*args, **kwargs):
            out = generate(*args, **kwargs)
            self.tokens += count(out, kwargs)
            return out

        owner.generate = counted


def transformers_tokens(out: torch.Tensor, kwargs: dict) -> int:
    return int((out != kwargs["pad_token_id"]).sum())


def vllm_tokens(outputs: list, kwargs: dict) -> int:
    return sum(len(o.outputs[0].token_ids) for o in outputs)


def timed(model, samples: list[dict], batch_size: int, max_new_tokens: int, counter: TokenCounter, engine=None
          ) -> tuple[float, int, dict[str, str]]:
    """(seconds, output tokens, {image_id: prediction}) for `samples` in batches of `batch_size`, after one warm-up batch."""
    generation = GenerationSettings(max_new_tokens=max_new_tokens)
    generate_rows(model, samples[:batch_size], engine, generation)
    preds = {}
    counter.tokens = 0
    start = time.perf_counter()
    generate_fitting(model, samples, batch_size,
                     lambda batch, rows: preds.update((r["image_id"], r["prediction"]) for r in rows),
                     engine, generation)
    return time.perf_counter() - start, counter.tokens, preds


def tiny_samples(folder: Path, images: int) -> tuple:
    """(model, samples, description) for the tiny random model on `images` synthetic images."""
    cfg = validate(OmegaConf.create(tiny_config(folder, images)), required=("model", "datasets"))
    return config_samples(cfg, images) + ("tiny random model (2-layer LLaMA, small Swin), synthetic images",)


def config_samples(cfg, images: int) -> tuple:
    """(model, samples) of an evaluation config's model and split (its first `images` images)."""
    model = builders.build_model(cfg.model, 0).eval()
    if torch.cuda.is_available():
        model.to("cuda")
    dataset = builders.build_datasets(evaluated_splits(cfg), 0, "eval", model.prompt_tokenizer)
    return model, load_samples(dataset, list(range(min(images, len(dataset)))))


def llama_7b_samples(folder: Path, images: int, summaries: Path | None) -> tuple:
    """(model, samples, description): train_step.py's random 7B-shape model on the GPU, synthetic 224-px images,
    a tokenizer trained on the summaries of `summaries` (a filter_cap.json; synthetic ones when it is absent)."""
    from train_step import SHARED_CAPTIONS, build_model, captions, summary_tokenizer

    from xraygpt.data.datasets import MixedDataset, build_openi
    from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval

    prompts = REPO / "prompts" / "alignment.txt"
    summaries = summaries or SHARED_CAPTIONS
    tokenizer = summary_tokenizer(captions(10_000, 0, summaries) + load_instructions(prompts), folder / "tok",
                                  summaries.is_file())
    generate_dataset(folder / "data", num_train=0, num_val=0, num_test=images, seed=0, image_size=224)
    dataset = MixedDataset([build_openi(str(folder / "data" / "test"), MedCLIPImageEval(224), CaptionProcessor(),
                                        prompt_path=str(prompts))], seed=0)
    model = build_model("7b", tokenizer, torch.device("cuda")).eval()
    return (model, load_samples(dataset, list(range(len(dataset)))),
            "random LLaMA-7B shape (bf16), MedCLIP Swin-T 224 px, synthetic images")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "7b"), default="tiny")
    parser.add_argument("--cfg-path", default=None, help="an evaluation config whose model and split are used")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--single-images", type=int, default=None, help="images timed one at a time (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="as eval_configs/tiny_eval.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vllm", action="store_true", help="add a row through vLLM's prompt_embeds input")
    parser.add_argument("--captions", type=Path, default=None,
                        help="7b: a filter_cap.json whose summaries train the tokenizer (default: ../shared's OpenI "
                             "sample; synthetic summaries when it is absent)")
    args = parser.parse_args(argv)
    if args.vllm and args.size == "7b" and not args.cfg_path:
        print("error: --vllm needs an LLM folder for vLLM to load; the random 7b model has none (use --cfg-path)",
              file=sys.stderr)
        return 2
    if args.size == "7b" and not torch.cuda.is_available():
        print("error: --size 7b needs a CUDA GPU (its bf16 weights alone are 13.5 GB); use tiny on CPU", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cfg_path:
            model, samples = config_samples(load_eval_config(args.cfg_path), args.images)
            source = args.cfg_path
        elif args.size == "7b":
            model, samples, source = llama_7b_samples(Path(tmp), args.images, args.captions)
        else:
            model, samples, source = tiny_samples(Path(tmp), args.images)
        single = samples[:args.single_images or len(samples)]
        modes = {"one at a time": (single, 1, None), f"batched ({args.batch_size})": (samples, args.batch_size, None)}
        skipped = None
        if args.vllm:
            try:
                modes["vllm"] = (samples, len(samples), VLLMEngine(model, 0.8, 0))
            except VLLMRefused as exc:
                skipped = str(exc)
        counter = TokenCounter()
        counter.attach(model.llm, transformers_tokens)
        if "vllm" in modes:
            counter.attach(modes["vllm"][2].llm, vllm_tokens)
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        tokens, outputs, peak = {}, {}, {}
        for r in range(args.rounds):
            for mode in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                subset, size, engine = modes[mode]
                if model.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(model.device)
                seconds, tokens[mode], outputs[mode] = timed(model, subset, size, args.max_new_tokens, counter, engine)
                times[mode].append(seconds)
                if model.device.type == "cuda" and engine is None:
                    peak[mode] = torch.cuda.max_memory_allocated(model.device) / 2**30
    where = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch thread(s)"
    lines = [f"{source}; {where}; greedy, max_new_tokens {args.max_new_tokens}, median of {args.rounds} rounds",
             f"{'mode':<22}{'images':>8}{'images/s':>10}{'tokens/s':>10}{'seconds':>10}{'speed-up':>10}"
             + (f"{'peak GiB':>10}" if peak else "")]
    base = len(single) / statistics.median(times["one at a time"])
    for mode, (subset, _, _) in modes.items():
        seconds = statistics.median(times[mode])
        lines.append(f"{mode:<22}{len(subset):>8}{len(subset) / seconds:>10.2f}{tokens[mode] / seconds:>10.1f}"
                     f"{seconds:>10.2f}{len(subset) / seconds / base:>9.1f}x"
                     + ((f"{peak[mode]:>10.1f}" if mode in peak else f"{'-':>10}") if peak else ""))
    if skipped:
        lines.append(f"{'vllm':<22}skipped: {skipped}")
    ids = [s["image_id"] for s in single]
    for mode in list(modes)[1:]:
        same = sum(outputs[mode][i] == outputs["one at a time"][i] for i in ids)
        lines.append(f"{mode}: greedy outputs identical to one at a time for {same} of {len(ids)} images")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
