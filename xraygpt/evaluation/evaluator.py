"""The report evaluator behind `evaluate.py`: batched generation over a split, then every metric.

Its constructor's signature is the `evaluation` section of an evaluation config (see
`xraygpt.config`).  `run(dataset)`:

1. joins torchrun's process group, if any (gloo on CPU, NCCL on GPU);
2. binds `output_dir` to this run: its fingerprint.json (model, split, generation settings;
   `xraygpt.evaluation.fingerprint`) must match this run's when the folder already holds
   outputs, else the run is refused (`StaleOutputs`) or, with `restart`, the old outputs are
   deleted; then it skips the ids that already have a prediction (resume), splits the rest
   round-robin across ranks, and generates them in batches (left padding, KV cache, greedy by
   default) with a tqdm bar in images/s on rank 0; each rank appends its rows to its part file
   after every batch.  Images are read `batch_size` x WINDOW_BATCHES at a time (`sample_windows`),
   sorted by prompt length within that window, and a batch that runs out of memory is retried at
   half the size (`generate_fitting`; metrics.json records the size rank 0 ended on, null if it
   generated nothing).  An image that does not decode is skipped and counted (the dataset would
   otherwise substitute the next sample);
3. on rank 0, after every rank finished: merges the parts into predictions.jsonl, writes
   predictions.csv / references.csv and metrics.json (`report_metrics` + `plugins` on the
   summaries; `vqa_metrics` in its `vqa` entry on the questions of VQA sources, whose rows carry
   the sample's `vqa` fields), and returns the metrics table; other ranks return None.

Studies (`xraygpt.data.study_dataset`: several images per sample) give one row per study: its
`image_id` is the study id (so predictions.csv's `study_id` is too), and the row adds `study_id`,
`views`, `image_ids` (the images shown) and `target`.  When the target is `sections`
("Findings: ... Impression: ..."), metrics.json's `sections` scores the findings and the
impression on their own (`study_prompts.split_sections` of prediction and reference; a row whose
reference lacks that section is skipped for it), besides the whole text.  A study whose reference is
empty (its target is only comparison wording, removed without the prior) is not generated: it is
recorded as skipped ("empty reference").

Outputs are described in `xraygpt.evaluation.predictions` and `report_metrics`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from xraygpt.atomic import atomic_write_text
from xraygpt.data.formats import DatasetError, capabilities_of
from xraygpt.data.study_prompts import split_sections
from xraygpt.evaluation.chexpert_rules import ChexpertRuleLabeler
from xraygpt.evaluation.fingerprint import FINGERPRINT, differences, model_fingerprint, read_fingerprint, split_fingerprint
from xraygpt.evaluation.generate import IMAGE_ABLATION_MODES, blank_image, generate_fitting, sample_windows
from xraygpt.evaluation.plugins import run_plugins
from xraygpt.evaluation.predictions import PredictionStore, report_ids, write_report_csv
from xraygpt.evaluation.report_metrics import compute_metrics, format_metrics, scoreable
from xraygpt.evaluation.rouge import make_scorer
from xraygpt.evaluation.text import check_cjk_tokenizer
from xraygpt.languages import DEFAULT_LANGUAGE
from xraygpt.evaluation.vllm_engine import VLLMEngine, check_decoding, check_supported
from xraygpt.evaluation.vqa_metrics import format_vqa_metrics, vqa_metrics
from xraygpt.models.generation import GenerationSettings
from xraygpt import runtime

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")


def dataset_samples(dataset) -> list[tuple]:
    """The (image id, image file, reference) of every key of a MixedDataset of file-based datasets."""
    if not capabilities_of(dataset).map_style:
        raise DatasetError("evaluation reads datasets in the xraygpt or r2gen format (one row per image id); "
                           "a webdataset shard folder cannot be resumed by id")
    return list(dataset.samples)


def dataset_languages(dataset) -> dict[str, str]:
    """{image id: its language}: the sample's own (a VQA question's), else its member dataset's, else `en`."""
    return {str(s[0]): getattr(s, "language", None) or getattr(ds, "language", DEFAULT_LANGUAGE)
            for ds in dataset.datasets for s in ds.samples}


def dataset_ids(dataset) -> list[str]:
    """The image id of every key of a MixedDataset of file-based datasets, without decoding images."""
    return [str(s[0]) for s in dataset_samples(dataset)]


def study_fields(sample: dict) -> dict:
    """The fields a study's row adds (module docstring); {} for a single-image sample."""
    if "views" not in sample:
        return {}
    return {"study_id": sample["image_id"], "report_id": sample["image_id"], "views": sample["views"],
            "image_ids": sample["image_ids"], "target": sample["target"]}


def section_rows(rows: list[dict], index: int) -> list[dict]:
    """`rows` with prediction and reference cut to one section (0 findings, 1 impression;
    `study_prompts.split_sections`)."""
    return [{**row, "prediction": split_sections(row.get("prediction") or "")[index],
             "reference": split_sections(row.get("reference") or "")[index]} for row in rows]


def check_settings(batch_size: int, image_mode: str, backend: str) -> None:
    """The `evaluation` values ReportEvaluator refuses, checked without a model (the builders' config
    validation calls this before anything is loaded)."""
    if batch_size < 1:
        raise ValueError(f"evaluation.batch_size must be >= 1, got {batch_size}")
    if image_mode not in IMAGE_ABLATION_MODES:
        raise ValueError(f"evaluation.image_mode must be one of {', '.join(IMAGE_ABLATION_MODES)}, got {image_mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"evaluation.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


class StaleOutputs(ValueError):
    """An output folder holding predictions of another model, split or generation setting."""


class ReportEvaluator:
    """Generates a summary per image of a split and scores them (see module docstring).

    Args (besides `model`, built by `xraygpt.builders`):
        output_dir: where predictions.jsonl, predictions.csv, references.csv, metrics.json go.
        batch_size: images per generation batch (per rank); halved whenever a batch runs out of memory.
        generation: the decoding settings (greedy by default; `num_beams > 1` for beam search,
            `do_sample` for sampling); in a config, its fields are keys of the `evaluation` section.
        image_mode: `image` (each its own), `shuffled` (each the next image's) or `blank`
            (a black image): ablations showing what the summaries owe to the image.
        seed: seeds sampling (plus the rank) and the bootstrap (entry points also seed the
            model build and the dataset's instruction choice with it).
        device: `auto` (this rank's GPU, else CPU), `cpu`, `cuda:0`, ...
        dist_backend: `auto` (`nccl` on GPU, `gloo` on CPU) or a torch.distributed backend.
        progress: show the progress bar (rank 0).
        bootstrap_resamples: resamples for the confidence intervals (0 = none).
        confidence: the intervals' level.
        phrases_dir: phrase lists for the CheXpert-style labeler (None: the package's).
        bertscore_model, chexbert_model, radgraph_model: local paths enabling those plug-ins.
        backend: `transformers` (`XrayGPT.generate`) or `vllm` (the spliced prompt embeddings
            through a vLLM engine over the same LLM folder, when vLLM is installed; one process
            on a CUDA GPU, no beam search or repetition penalty, `batch_size` prompts per vLLM
            call; see xraygpt.evaluation.vllm_engine).
        vllm_gpu_memory_utilization: the share of GPU memory the vLLM engine may take (the
            encoder, projection and embedding table beside it need little of the rest).
        restart: when `output_dir` holds outputs of another run (its fingerprint.json differs,
            or it has none), delete them and start over instead of refusing.
        cjk_tokenizer: how the report metrics cut text in languages other than English (a row is in
            its dataset's `language`): `characters` (each CJK character a token) or `jieba` (words of
            the jieba segmenter, when installed); see `xraygpt.evaluation.text`.
    """

    def __init__(
        self,
        model,
        output_dir: str,
        batch_size: int = 16,
        generation: GenerationSettings = GenerationSettings(),
        image_mode: str = "image",
        seed: int = 42,
        device: str = "auto",
        dist_backend: str = "auto",
        progress: bool = True,
        bootstrap_resamples: int = 1000,
        confidence: float = 0.95,
        phrases_dir: Optional[str] = None,
        bertscore_model: Optional[str] = None,
        chexbert_model: Optional[str] = None,
        radgraph_model: Optional[str] = None,
        backend: str = "transformers",
        vllm_gpu_memory_utilization: float = 0.8,
        restart: bool = False,
        cjk_tokenizer: str = "characters",
    ):
        check_settings(batch_size, image_mode, backend)
        check_cjk_tokenizer(cjk_tokenizer)
        self.cjk_tokenizer = cjk_tokenizer
        if backend == "vllm":
            check_supported(model, vllm_gpu_memory_utilization)
            check_decoding(generation)
        self.model = model
        self.restart = restart
        self.backend = backend
        self.vllm_gpu_memory_utilization = vllm_gpu_memory_utilization
        self.output_dir = Path(output_dir)
        self.batch_size = batch_size
        self.generation = generation
        self.image_mode = image_mode
        self.seed = seed
        self.device = device
        self.dist_backend = dist_backend
        self.progress = progress
        self.bootstrap_resamples = bootstrap_resamples
        self.confidence = confidence
        self.plugin_paths = {"bertscore": bertscore_model, "chexbert": chexbert_model, "radgraph": radgraph_model}
        # Fail before generating, not after: phrase files and rouge-score are needed at the end.
        self.labeler = ChexpertRuleLabeler(phrases_dir)
        make_scorer()

    def _generate(self, dataset, ids: list[str], keys: list[int], store: PredictionStore, dist, reports: dict,
                  engine: Optional[VLLMEngine], languages: dict[str, str]) -> Optional[int]:
        """Generate `keys` of `dataset` in batches (through `engine` if given), appending rows / skip records to `store`.

        Returns the batch size in use at the end (None when there was nothing to generate).
        """
        blank = None
        if self.image_mode == "blank":
            blank = blank_image(dataset.datasets[0].vis_processor, self.model.encoder.image_size)
        torch.manual_seed(self.seed + dist.rank)
        bar = tqdm(total=len(keys), unit="img", desc=f"generate ({self.image_mode})",
                   disable=not (self.progress and dist.is_main))

        def emit(batch: list[dict], rows: list[dict]) -> None:
            store.append([{"image_id": row["image_id"], "report_id": reports.get(row["image_id"]),
                           "language": languages.get(str(row["image_id"]), DEFAULT_LANGUAGE), **row,
                           **({"vqa": sample["vqa"]} if "vqa" in sample else {}), **study_fields(sample)}
                          for sample, row in zip(batch, rows)])
            bar.update(len(rows))

        batch_size = self.batch_size
        for window, samples in sample_windows(dataset, keys, self.batch_size, self.image_mode, blank):
            good = [s for k, s in zip(window, samples) if s["image_id"] == ids[k]]
            skipped = [{"image_id": ids[k], "skipped": "image does not decode"}
                       for k, s in zip(window, samples) if s["image_id"] != ids[k]]
            if skipped:
                store.append(skipped)
                bar.update(len(skipped))
            batch_size = generate_fitting(self.model, good, batch_size, emit, engine, self.generation)
        bar.close()
        return batch_size if keys else None

    def _bind_outputs(self, store: PredictionStore, dist, fingerprint: dict) -> None:
        """Refuse (or, with `restart`, clear) outputs of another run; then record this run's fingerprint."""
        old = read_fingerprint(self.output_dir)
        if store.has_outputs() and old != fingerprint:
            what = (f"{FINGERPRINT} differs in {', '.join(differences(old, fingerprint))}" if old is not None
                    else f"has no readable {FINGERPRINT}")
            if not self.restart:
                raise StaleOutputs(f"{self.output_dir} holds outputs of another run (its {what}); set "
                                   f"evaluation.restart=true to delete them and start over, or choose another output_dir")
            runtime.barrier()
            if dist.is_main:
                logger.warning("%s holds outputs of another run (%s): deleted (evaluation.restart)", self.output_dir, what)
                store.clear()
        runtime.barrier()
        if dist.is_main:
            atomic_write_text(self.output_dir / FINGERPRINT, json.dumps(fingerprint, indent=1))
        runtime.barrier()

    def run(self, dataset, dataset_roots: list[Path] = ()) -> str | None:
        """Generate what is missing, then (rank 0) write and score everything; returns the table on rank 0.

        With backend vllm only the encoder, projection and LLM embedding table are moved to the
        device and the rest of the LLM stays where it was: the model is left split, for this
        run only (use a freshly built model for anything else).

        Args:
            dataset: the split (a MixedDataset of CaptionDatasets, read with eval processors).
            dataset_roots: the split folders, searched for `reports.json` (report ids).
        """
        dist = runtime.init_distributed(self.device, self.dist_backend)
        if self.backend == "vllm" and dist.world_size > 1:
            raise ValueError("evaluation.backend vllm runs in one process (vLLM batches by itself); run evaluate.py "
                             "without torchrun")
        samples = dataset_samples(dataset)
        ids = [str(s[0]) for s in samples]
        store = PredictionStore(self.output_dir, dist.rank)
        self._bind_outputs(store, dist, {
            "model": model_fingerprint(self.model), "split": split_fingerprint(ids, [str(s[2]) for s in samples]),
            "generation": {"backend": self.backend, "image_mode": self.image_mode, "seed": self.seed,
                           **self.generation.as_dict()}})
        done = store.done_ids()
        # nothing to score against (a study whose target is empty once comparisons are removed): not generated
        empty = {image_id for image_id, s in zip(ids, samples) if not str(s[2]).strip()}
        if empty and dist.is_main:
            store.append([{"image_id": image_id, "skipped": "empty reference"} for image_id in sorted(empty)])
        todo = [k for k, image_id in enumerate(ids) if image_id not in done and image_id not in empty]
        mine = todo[dist.rank::dist.world_size]
        logger.info("%d images in the split, %d already predicted in %s, %d to generate (%d on this rank)",
                    len(ids), len(ids) - len(todo), self.output_dir, len(todo), len(mine))
        engine = None
        if self.backend == "vllm":  # vLLM runs the LLM; only what makes the prompt embeddings goes to the device
            for part in (self.model.encoder, self.model.projector, self.model.llm.get_input_embeddings()):
                part.to(dist.device)
            if mine:
                engine = VLLMEngine(self.model, self.vllm_gpu_memory_utilization, self.seed)
        else:
            self.model.to(dist.device)
        was_training = self.model.training
        self.model.eval()
        languages = dataset_languages(dataset)
        final_batch_size = self._generate(dataset, ids, mine, store, dist, report_ids(list(dataset_roots)), engine,
                                          languages)
        self.model.train(was_training)
        runtime.barrier()
        if not dist.is_main:
            return None
        rows, skipped = store.merge(ids)
        for row in rows:  # the split's languages as configured now (rows of an older run may lack them)
            row["language"] = languages.get(str(row.get("image_id")), row.get("language") or DEFAULT_LANGUAGE)
        write_report_csv(rows, self.output_dir / "predictions.csv", "prediction")
        write_report_csv(rows, self.output_dir / "references.csv", "reference")
        vqa_rows = [r for r in rows if "vqa" in r]  # questions (xraygpt.data.vqa) are scored as answers, not reports
        rows = [r for r in rows if "vqa" not in r]
        metrics = compute_metrics(rows, self.labeler, self.bootstrap_resamples, self.confidence, self.seed, skipped,
                                  self.cjk_tokenizer)
        scored = scoreable(rows)[0]
        metrics["plugins"] = run_plugins([r["prediction"] for r in scored], [r["reference"] for r in scored],
                                         self.plugin_paths, dist.device)
        metrics["generation"] = {"backend": self.backend, "image_mode": self.image_mode,
                                 "batch_size": self.batch_size, "final_batch_size": final_batch_size,
                                 **self.generation.as_dict()}
        if vqa_rows:
            metrics["vqa"] = vqa_metrics(vqa_rows)
        sectioned = [r for r in rows if r.get("target") == "sections"]
        if sectioned:
            metrics["sections"] = {name: compute_metrics(section_rows(sectioned, k), self.labeler, self.bootstrap_resamples,
                                                         self.confidence, self.seed, None, self.cjk_tokenizer)
                                   for k, name in enumerate(("findings", "impression"))}
        atomic_write_text(self.output_dir / "metrics.json", json.dumps(metrics, indent=2))
        logger.info("wrote %s", self.output_dir / "metrics.json")
        if vqa_rows:
            return (format_metrics(metrics) + "\n\n" if rows else "") + format_vqa_metrics(metrics["vqa"])
        return format_metrics(metrics) + "".join(f"\n\n{name} only:\n{format_metrics(part)}"
                                                 for name, part in metrics.get("sections", {}).items())
