"""Stage-1 training-step throughput, side by side: padded vs length-grouped batches, cached features
vs full-size Swin-T images encoded on the fly.

    python benchmarks/train_step.py [--size tiny|small|7b] [--batch-size B] [--steps S] [--threads 1]
                                    [--device auto|cpu|cuda] [--seed 0] [--captions filter_cap.json]

Model (random weights, built here; nothing is downloaded):
  encoder  the full-size MedCLIP Swin-T (224 px, 49 tokens x 768) -> the linear projection (trains)
  tiny     a 2-layer LLaMA (hidden 128), the tests' size
  small    a LLaMA of ~110M parameters (hidden 768, 12 layers, MLP 2048, vocab 32000), CPU-friendly
  7b       the LLaMA-7B shape (hidden 4096, 32 layers, MLP 11008, vocab 32000), bf16 weights created
           directly on the GPU; refused without CUDA
Data: the real summaries of --captions (default: ../shared/data/openi-sample's; else synthetic ones),
one tiny image file each (written to a temporary XrayGPT-layout folder, read by the real dataset,
sampler and collator at 224 px), instructions from prompts/alignment.txt, and a SentencePiece
tokenizer (vocab 8000) trained on the summaries here.

Rows, the same model and draws, timed in one run with the modes interleaved step by step:
  padded   random batches (ResumableSampler), image features from the cache (fp16, as stored)
  grouped  length-grouped batches (LengthGroupedSampler), image features from the cache
  images   length-grouped batches, the encoder run on the 224-px images in every step
Columns: samples/s and real (non-padding) tokens/s of a whole step (fwd + bwd + AdamW); the
real-token fraction over a whole pass of the sampler (and over the timed batches); fwd+bwd time
over no-grad forward time (medians); MB of activations autograd saves for backward; peak GPU
memory per mode on CUDA (on CPU the process's peak RSS is printed once); MFU on CUDA (4N FLOPs per
real token, N = LLM parameters without the input embedding table, against the GPU's dense bf16
peak from PEAK_TFLOPS).  Then the largest difference between per-sample losses from images and
from cached features (fp32 and fp16 storage) on the timed batches.  Step rates on a shared CPU
vary: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xraygpt.data.collate import TrainCollator  # noqa: E402
from xraygpt.data.datasets import MixedDataset, build_mimic  # noqa: E402
from xraygpt.data.sampler import LengthGroupedSampler, ResumableSampler  # noqa: E402
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval  # noqa: E402
from xraygpt.models.medclip_encoder import MedCLIPVisionEncoder, load_swin_config  # noqa: E402
from xraygpt.models.xraygpt import XrayGPT  # noqa: E402
from xraygpt.prompting import PromptFormat, load_instructions  # noqa: E402
from xraygpt.training.tasks import ImageTextPretrainTask  # noqa: E402

SHARED_CAPTIONS = REPO.parent / "shared" / "data" / "openi-sample" / "filter_cap.json"
SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000),
}
DEFAULTS = {"tiny": (16, 10), "small": (8, 3), "7b": (16, 10)}  # batch size, timed steps
# Dense bf16 tensor-core peaks (TFLOP/s), matched in order against torch.cuda.get_device_name().
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0))
MODES = ("padded", "grouped", "images")


def captions(limit: int, seed: int, path: Path = SHARED_CAPTIONS) -> list[str]:
    """The real summaries of `path` (a filter_cap.json: the OpenI sample's by default), or synthetic ones when it is absent."""
    if path.is_file():
        return [a["caption"] for a in json.loads(path.read_text())["annotations"]][:limit]
    import numpy as np

    from xraygpt.embedded.anatomy import FINDINGS
    from xraygpt.embedded.summaries import write_summary

    rng = np.random.default_rng(seed)
    return [write_summary(frozenset(f for f in FINDINGS if rng.random() < 0.3), rng) for _ in range(limit)]


def summary_tokenizer(texts: list[str], folder: Path, real: bool):
    """A SentencePiece LLaMA tokenizer trained on `texts` in `folder`: 8000 pieces on real summaries,
    1000 on synthetic ones (their few hundred words cannot fill 8000)."""
    from xraygpt.embedded.assets import train_tokenizer
    from xraygpt.models.llm import load_tokenizer

    train_tokenizer(texts, folder, vocab_size=8000 if real else 1000)
    return load_tokenizer(folder)


def write_dataset(folder: Path, texts: list[str]) -> Path:
    """An XrayGPT-layout folder: filter_cap.json + one 16 x 16 grayscale PNG per summary."""
    from PIL import Image

    (folder / "image").mkdir(parents=True)
    for i in range(len(texts)):
        Image.effect_noise((16, 16), 40 + i % 50).save(folder / "image" / f"{i}.png")
    anns = [{"image_id": str(i), "caption": t} for i, t in enumerate(texts)]
    (folder / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    return folder


def build_model(size: str, tokenizer, device: torch.device) -> XrayGPT:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SIZES[size])
    shape.setdefault("vocab_size", len(tokenizer))
    config = LlamaConfig(num_key_value_heads=shape["num_attention_heads"], max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:  # weights are created where they live (7b: directly on the GPU)
        llm = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
        encoder = MedCLIPVisionEncoder(load_swin_config(None), 512, "patch")
    model = XrayGPT(encoder, llm, tokenizer, PromptFormat(max_txt_len=160)).to(device)
    return model.train()


def llm_flop_params(llm) -> int:
    """N: LLM parameters without the input embedding table (a tied LM head still counts)."""
    embed = llm.get_input_embeddings().weight
    tied = llm.get_output_embeddings().weight is embed
    return sum(p.numel() for p in llm.parameters() if p is not embed) + (embed.numel() if tied else 0)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def real_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths[k] for b in batches for k in b)
    return real / sum(len(b) * max(lengths[k] for k in b) for b in batches)


def saved_activation_mb(model, task, batch: dict) -> float:
    """MB of tensors autograd keeps for the backward pass of one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        task.train_step(model, batch)["loss"].detach()
    return sum(seen.values()) / 2**20


def count_flops(model, task, batches: dict[str, list[dict]], amp) -> tuple[float, float]:
    """(Swin-T forward FLOPs per image, fwd+bwd FLOPs per sample from cached features), counted by
    torch.utils.flop_counter on the first timed batch of `images` and of `grouped`."""
    from torch.utils.flop_counter import FlopCounterMode

    images, cached = batches["images"][1], batches["grouped"][1]
    with FlopCounterMode(display=False) as enc, torch.no_grad(), amp:
        model.encoder(images["pixel_values"])
    with FlopCounterMode(display=False) as step, amp:
        task.train_step(model, cached)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return (enc.get_total_flops() / len(images["pixel_values"]),
            step.get_total_flops() / len(cached["image_features"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=None, help="micro-batch (default: tiny 16, small 8, 7b 16)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (default: tiny 10, small 3, 7b 10)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine, two threads waiting for each "
                             "other made tiny steps 25x slower, measured)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--captions", type=Path, default=SHARED_CAPTIONS,
                        help="a filter_cap.json whose summaries are used (default: ../shared's OpenI sample; "
                             "synthetic summaries when it is absent)")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.size == "7b" and device.type != "cuda":
        print("error: --size 7b needs a CUDA GPU (its bf16 weights alone are 13.5 GB); use tiny or small on CPU",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    batch_size, steps = args.batch_size or DEFAULTS[args.size][0], args.steps or DEFAULTS[args.size][1]
    torch.manual_seed(args.seed)
    texts = captions(10_000, args.seed, args.captions)
    instructions_file = REPO / "prompts" / "alignment.txt"
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = summary_tokenizer(texts + load_instructions(instructions_file), Path(tmp) / "tok",
                                      args.captions.is_file())
        images = build_mimic(str(write_dataset(Path(tmp) / "data", texts)), MedCLIPImageEval(224), CaptionProcessor(),
                             prompt_path=str(instructions_file))
        model = build_model(args.size, tokenizer, device)
        dataset = MixedDataset([images], args.seed).with_instructions_by_key()
        lengths = dataset.draw_lengths(model.prompt_tokenizer)(0)
        n = len(dataset)
        samplers = {"padded": ResumableSampler(n, seed=args.seed),
                    "grouped": LengthGroupedSampler(lambda p: lengths, n, batch_size, seed=args.seed)}
        passes = {}
        for name, sampler in samplers.items():
            keys = iter(sampler)
            passes[name] = [[next(keys) for _ in range(batch_size)] for _ in range(n // batch_size)]
        collate, task = TrainCollator(model.prompt_tokenizer), ImageTextPretrainTask()
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        batches: dict[str, list[dict]] = {}
        for mode in MODES:  # one warm-up batch + `steps` timed ones, taken from the middle of the pass
            keys = passes["padded" if mode == "padded" else "grouped"][n // batch_size // 2:][: steps + 1]
            batches[mode] = []
            for ks in keys:
                batch = collate([dataset[k] for k in ks])
                if mode != "images":
                    with torch.no_grad(), amp:
                        batch["image_features"] = model.encoder(batch.pop("pixel_values").to(device)).half()
                batches[mode].append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})

        loss_gap = {}
        with torch.no_grad(), amp:
            for ks_batch in batches["images"]:
                feats = model.encoder(ks_batch["pixel_values"])
                ref = task.train_step(model, ks_batch)["sample_loss"]
                for dtype in (torch.float32, torch.float16):
                    other = dict(ks_batch, pixel_values=None, image_features=feats.to(dtype))
                    gap = (task.train_step(model, other)["sample_loss"] - ref).abs().max().item()
                    loss_gap[dtype] = max(loss_gap.get(dtype, 0.0), gap)

        times: dict[str, dict[str, list[float]]] = {m: {"fwd": [], "fwd_bwd": [], "step": []} for m in MODES}
        for step in range(steps + 1):
            for mode in MODES:
                batch = batches[mode][step]
                sync(device)
                start = time.perf_counter()
                with torch.no_grad(), amp:
                    task.train_step(model, batch)
                sync(device)
                forward = time.perf_counter() - start
                start = time.perf_counter()
                with amp:
                    loss = task.train_step(model, batch)["loss"]
                loss.backward()
                sync(device)
                fwd_bwd = time.perf_counter() - start
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync(device)
                if step:  # the first step of each mode warms up
                    times[mode]["fwd"].append(forward)
                    times[mode]["fwd_bwd"].append(fwd_bwd)
                    times[mode]["step"].append(time.perf_counter() - start)

        memory = {}
        for mode in MODES:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with amp:
                act = saved_activation_mb(model, task, batches[mode][0])
            memory[mode] = (act, torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)

        enc_flops, step_flops = count_flops(model, task, batches, amp)
        n_flop = llm_flop_params(model.llm)
        peak = peak_tflops(device)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, torch threads: {torch.get_num_threads()}"
        print(f"train_step --size {args.size}: LLM {sum(p.numel() for p in model.llm.parameters()) / 1e6:.1f}M parameters "
              f"(N = {n_flop / 1e6:.1f}M without the embedding table), Swin-T 224 px, batch {batch_size}, "
              f"{steps} timed steps per mode (medians), {n} summaries ({args.captions if args.captions.is_file() else 'synthetic'}), "
              f"{where}")
        header = (f"{'mode':<9}{'samples/s':>10}{'tokens/s':>10}{'real frac':>10}{'(timed)':>9}{'step s':>9}"
                  f"{'fwd+bwd/fwd':>12}{'saved MB':>10}")
        header += f"{'peak GiB':>10}{'MFU':>7}" if device.type == "cuda" else ""
        print(header)
        rates = {}
        for mode in MODES:
            t = {k: statistics.median(v) for k, v in times[mode].items()}
            timed = batches[mode][1:]
            real_tokens = statistics.mean(int(b["attention_mask"].sum()) for b in timed)
            timed_frac = statistics.mean(float(b["attention_mask"].float().mean()) for b in timed)
            pass_frac = real_fraction(passes["padded" if mode == "padded" else "grouped"], lengths)
            rates[mode] = batch_size / t["step"]
            line = (f"{mode:<9}{rates[mode]:>10.2f}{real_tokens / t['step']:>10.0f}{pass_frac:>10.3f}{timed_frac:>9.3f}"
                    f"{t['step']:>9.3f}{t['fwd_bwd'] / t['fwd']:>12.2f}{memory[mode][0]:>10.0f}")
            if device.type == "cuda":
                mfu = f"{4 * n_flop * real_tokens / t['step'] / (peak * 1e12):>7.1%}" if peak else f"{'n/a':>7}"
                line += f"{memory[mode][1]:>10.1f}{mfu}"
            print(line)
        print(f"real-token fraction over a whole pass: grouped {real_fraction(passes['grouped'], lengths):.3f} vs "
              f"padded {real_fraction(passes['padded'], lengths):.3f} (same batch size {batch_size})")
        print(f"cached features vs images on the fly: {rates['grouped'] / rates['images']:.2f}x the step rate; "
              f"max |per-sample loss difference|: fp32 features {loss_gap[torch.float32]:.2e}, "
              f"fp16 features {loss_gap[torch.float16]:.2e}")
        print(f"counted FLOPs: Swin-T forward {enc_flops / 1e9:.1f} G/image, stage-1 fwd+bwd from cached features "
              f"{step_flops / 1e9:.1f} G/sample; so the cache can gain at most {1 + enc_flops / step_flops:.2f}x "
              f"where time follows FLOPs (image decoding not included)")
        if device.type != "cuda":
            print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
