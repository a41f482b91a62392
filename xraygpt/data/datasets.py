"""Image-summary datasets and the `mimic` / `openi` dataset builders (one per source, same arguments).

A builder reads its source in one of three formats (`format:`): `xraygpt` (filter_cap.json +
image folder), `r2gen` (annotation.json with train/val/test lists, one sample per image) or
`webdataset` (a folder of tar shards + shards.json); see `xraygpt.data.formats` and
`xraygpt.data.shards` for the layouts.

JSON formats give a map-style `CaptionDataset`: at construction the annotations are validated
and the images located once; entries without an image, with a missing id, a duplicate id or an
empty caption, or (with `verify_images`) whose file PIL cannot identify from its header, are
counted, logged once per reason with the first ids, and dropped; zero usable samples is an
error.  An image that fails to decode during training (truncated, corrupt, more than
`max_image_pixels` pixels) is logged with its path and replaced by the next sample, so an
epoch never crashes hours in.  Random choices (instruction, augmentation) come from a per-draw
RNG seeded by (seed, key), which makes data order and content reproducible across workers and
across a resume.  Shards give a streaming `ShardDataset` instead (see `xraygpt.data.shards`
for how it splits across ranks and resumes).

With `feature_cache: DIR` (any format) the training set is a map-style `FeatureCaptionDataset`
that reads the frozen encoder's outputs, ids and captions from a cache made by
`python cache_features.py` instead of decoding images (`root` is not read; the held-out
set, `eval_root`, still reads images).  Its samples carry `image_features` (N, D) instead of
`pixel_values`, and take their instruction from the per-draw RNG exactly as the image path does
with a deterministic (eval) processor, so a run gives the same losses from the cache as from
the images.

Every dataset has a `language` (`en` by default; `xraygpt.languages`): its instructions are
that language's (`prompts/alignment.txt` for English, `prompts/<language>/alignment.txt` else,
see `xraygpt.prompting.instruction_file`; a language without that file is refused in one line
naming it), and evaluation scores its summaries with that language's tokenizer.  Captions
visibly in another script (no CJK character in a Chinese dataset, one in an English dataset) are
counted and logged once with the first ids, not dropped.  `openi_zh` / `mimic_zh` are the same
builders with `language: zh` by default, so that one config can list a source in two languages
(the `datasets` keys are builder names): a mixed EN+ZH stage 2 lists `openi` and `openi_zh`.

Mixing (`MixedDataset`): several training datasets make one pass of len = the sum of their
sizes.  By default a pass is their concatenation, so each source is drawn in proportion to its
size, every sample once per pass.  With a `sample_ratio` per dataset (MiniGPT-4 / LAVIS's
name; `datasets.<name>.sample_ratio`) a pass holds draws of each source in proportion to its
ratio instead (`draws_per_pass`), and a source cycles through its samples in a seeded
random order, each sample once per cycle, however many passes a cycle spans.

Length-grouped batches (`run.group_by_length`) need each draw's token length before it is
loaded; the instruction is then drawn from its own RNG seeded by (seed, key, "instruction")
rather than after the augmentation draws (`MixedDataset.with_instructions_by_key`), and
`MixedDataset.draw_lengths` gives the exact lengths the collator will produce.
"""

from __future__ import annotations

import bisect
import copy
import functools
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image

from xraygpt.data.feature_cache import FEATURE_CACHE, FeatureCache, FeatureCacheError
from xraygpt.data.formats import (IMAGE_FILES, Capabilities, DatasetError, capabilities_of, dataset_format, image_text_sample,
                                  log_dropped, read_samples)
from xraygpt.data.shards import ShardDataset, read_manifest
from xraygpt.data.transforms import DECODE_ERRORS, decode_image
from xraygpt.languages import DEFAULT_LANGUAGE, written_in
from xraygpt.prompting import PromptTokenizer, load_language_instructions
from xraygpt.registry import register

logger = logging.getLogger(__name__)

class CaptionDataset(torch.utils.data.Dataset):
    """Image + summary samples of one source, read from files.

    Args:
        name: source name for messages (e.g. "mimic").
        samples: list of (image_id, image file path, caption).
        vis_processor: PIL image, rng -> (3, H, W) tensor.
        text_processor: caption -> cleaned caption.
        instructions: instructions to sample from (each holds `<ImageHere>`).
        max_pixels: images with more pixels do not decode (checked from the header).
        language: the language of the captions and instructions (`xraygpt.languages`).
    """

    capabilities = IMAGE_FILES

    def __init__(
        self,
        name: str,
        samples: list[tuple[str, Path, str]],
        vis_processor: Callable,
        text_processor: Callable[[str], str],
        instructions: list[str],
        max_pixels: int,
        language: str = DEFAULT_LANGUAGE,
    ):
        self.name = name
        self.language = language
        self.samples = samples
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.instructions = instructions
        self.max_pixels = max_pixels
        self.decode_failures = 0

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """Decoded image of sample `index` (raises one of DECODE_ERRORS when it does not decode)."""
        return decode_image(self.samples[index][1], self.max_pixels)

    def get(self, index: int, rng: random.Random, instruction: str | None = None) -> dict:
        """Sample `index` as {image_id, pixel_values (3, H, W), instruction, caption, source}.

        `instruction` fixes the instruction (default: drawn from `rng` after the image's draws).
        An undecodable image is logged and replaced by the next one (at most len(self) tries).
        """
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            image_id, path, caption = self.samples[i]
            try:
                image = self.load_image(i)
            except DECODE_ERRORS as exc:
                self.decode_failures += 1
                logger.warning("%s: image %s does not decode (%s); using the next sample", self.name, path, exc)
                continue
            return image_text_sample(image_id, image, caption, self.name, self.vis_processor, self.text_processor,
                                     [instruction] if instruction is not None else self.instructions, rng)
        raise DatasetError(f"{self.name}: no image in the dataset decodes")

    def __getitem__(self, index: int) -> dict:
        return self.get(index, random.Random(index))


class FeatureCaptionDataset(torch.utils.data.Dataset):
    """Cached encoder features + summary samples of one source (see module docstring).

    Args:
        name: source name for messages (e.g. "mimic").
        cache: the opened feature cache (features, image ids and captions).
        text_processor: caption -> cleaned caption.
        instructions: instructions to sample from (each holds `<ImageHere>`).
        max_samples: use only the first N samples of the cache (0 = all).
        language: the language of the captions and instructions (`xraygpt.languages`).
    """

    capabilities = FEATURE_CACHE

    def __init__(self, name: str, cache: FeatureCache, text_processor: Callable[[str], str], instructions: list[str],
                 max_samples: int = 0, language: str = DEFAULT_LANGUAGE):
        self.name = name
        self.language = language
        self.cache = cache
        self.samples = [(image_id, row, caption) for row, (image_id, caption) in enumerate(cache.samples)]
        if max_samples > 0:
            self.samples = self.samples[:max_samples]
        self.text_processor = text_processor
        self.instructions = instructions

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, index: int, rng: random.Random, instruction: str | None = None) -> dict:
        """Sample `index` as {image_id, image_features (N, D) in the cache's dtype, instruction, caption, source}."""
        image_id, row, caption = self.samples[index]
        return {
            "image_id": image_id,
            "image_features": self.cache.features(row),
            "instruction": instruction if instruction is not None else rng.choice(self.instructions),
            "caption": self.text_processor(caption),
            "source": self.name,
        }

    def __getitem__(self, index: int) -> dict:
        return self.get(index, random.Random(index))


def build_caption_dataset(
    name: str,
    root: str,
    format: str,
    split: str,
    ann_file: str | None,
    image_dir: str | None,
    prompt_path: str,
    max_samples: int,
    verify_images: bool,
    max_image_pixels: int,
    shuffle_buffer: int,
    vis_processor: Callable,
    text_processor: Callable[[str], str],
    feature_cache: str | None = None,
    language: str = DEFAULT_LANGUAGE,
) -> CaptionDataset | ShardDataset | FeatureCaptionDataset:
    """Validate a dataset folder in `format` and build its dataset (see module docstring).

    With `feature_cache`, the samples and their features come from that cache; `root` is not read.
    The instructions are `language`'s version of `prompt_path` (`prompting.instruction_file`).
    """
    fmt = dataset_format(format, name)
    try:
        instructions = load_language_instructions(prompt_path, language)
    except ValueError as exc:  # LanguageError, PromptFileError
        raise type(exc)(f"datasets.{name}: {exc}") from None
    if feature_cache:
        try:
            cache = FeatureCache(feature_cache)
        except DatasetError as exc:  # FeatureCacheError, or a manifest that is not JSON
            raise FeatureCacheError(f"datasets.{name}.feature_cache: {exc}") from None
        logger.info("%s: %d samples from the feature cache %s (%s %s features; images and vis_processor.train "
                    "are not used, so no augmentation)", name, len(cache), feature_cache,
                    cache.manifest["dtype"], cache.encoder.get("output"))
        dataset = FeatureCaptionDataset(name, cache, text_processor, instructions, max_samples, language)
        log_other_script(name, [(image_id, caption) for image_id, _, caption in dataset.samples], language)
        return dataset
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"{name}: dataset root {root_path} does not exist")
    if not fmt.capabilities.map_style:  # shards: a stream
        if max_samples > 0:
            raise DatasetError(f"{name}: max_samples is not supported with format {format} (write fewer shards)")
        shards, total = read_manifest(root_path, ann_file or fmt.ann_file)
        logger.info("%s: %d samples in %d shards from %s", name, total, len(shards), root_path)
        stream = ShardDataset(name, shards, total, vis_processor, text_processor, instructions, max_image_pixels,
                              shuffle_buffer)
        stream.language = language  # captions are read while streaming: their script is not checked
        return stream
    samples, dropped, total = read_samples(format, root_path, ann_file, image_dir, split, verify_images)
    log_dropped(name, dropped, total)
    if not samples:
        raise DatasetError(f"{name}: no usable sample in {root_path} (format {format})")
    if max_samples > 0:
        samples = samples[:max_samples]
    logger.info("%s: %d samples from %s", name, len(samples), root_path)
    log_other_script(name, [(image_id, caption) for image_id, _, caption in samples], language)
    return CaptionDataset(name, samples, vis_processor, text_processor, instructions, max_image_pixels, language)


def log_other_script(name: str, captions: list[tuple[str, str]], language: str) -> int:
    """Count (and log once, with the first ids) the (id, caption) pairs visibly written in another
    script than `language`'s (`xraygpt.languages.written_in`); returns the count."""
    other = [str(image_id) for image_id, caption in captions if not written_in(caption, language)]
    if other:
        logger.warning("%s: %d of %d captions are not written in the script of language %r (first: %s); check "
                       "datasets.%s.language", name, len(other), len(captions), language, ", ".join(other[:5]), name)
    return len(other)


def _caption_source(name: str, description: str, default_language: str = DEFAULT_LANGUAGE
                    ) -> Callable[..., CaptionDataset | ShardDataset]:
    """Register the dataset builder of one source under `name` (arguments: see README "datasets");
    `default_language` is its `language` when the config does not set one."""

    def builder(
        root: str,
        vis_processor: Callable,
        text_processor: Callable[[str], str],
        format: str = "xraygpt",
        split: str = "train",
        eval_split: str = "val",
        ann_file: Optional[str] = None,
        image_dir: Optional[str] = None,
        prompt_path: str = "prompts/alignment.txt",
        max_samples: int = 0,
        verify_images: bool = True,
        max_image_pixels: int = 50_000_000,
        shuffle_buffer: int = 256,
        feature_cache: Optional[str] = None,
        language: str = default_language,
    ) -> CaptionDataset | ShardDataset | FeatureCaptionDataset:
        # eval_split (r2gen) is read by xraygpt.builders.build_datasets, which passes it as `split`
        # when building the held-out set; it is a builder argument so that the config schema has it.
        # feature_cache applies to the training set only (build_datasets drops it for the held-out set).
        del eval_split
        return build_caption_dataset(name, root, format, split, ann_file, image_dir, prompt_path, max_samples,
                                     verify_images, max_image_pixels, shuffle_buffer, vis_processor, text_processor,
                                     feature_cache, language)

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = description
    return register("dataset", name)(builder)


build_mimic = _caption_source("mimic", "MIMIC-CXR image-summary pairs (stage 1).")
build_openi = _caption_source("openi", "OpenI image-summary pairs (stage 2); ids are `<report>_<view>`.")
# The same sources in Chinese (XrayGLM's translations), listable beside the English ones in one config.
build_mimic_zh = _caption_source("mimic_zh", "MIMIC-CXR image-summary pairs in Chinese (language zh).", "zh")
build_openi_zh = _caption_source("openi_zh", "OpenI image-summary pairs in Chinese (XrayGLM's filter_cap_zh.json; "
                                             "language zh).", "zh")


def draws_per_pass(sizes: Sequence[int], ratios: Sequence[float]) -> list[int]:
    """How many of a pass's sum(sizes) draws go to each dataset with sampling `ratios`.

    Each gets its share sum(sizes) * ratio / sum(ratios), rounded by largest remainder (ties to
    the earlier dataset) so that the counts add up to the pass; a dataset whose share rounds to
    0 gets 1, taken from the largest count (a positive ratio is never 'never drawn').
    """
    if len(sizes) != len(ratios):
        raise ValueError(f"{len(ratios)} sampling ratios for {len(sizes)} datasets")
    bad = [r for r in ratios if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0)]
    if bad:
        raise ValueError(f"a sampling ratio must be a finite number > 0, got {bad[0]!r}")
    total, weight = sum(sizes), float(sum(ratios))
    if total < len(sizes):
        raise ValueError(f"{total} samples cannot be shared among {len(sizes)} datasets")
    exact = [total * r / weight for r in ratios]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i, count in enumerate(counts):
        if count == 0:
            counts[max(range(len(counts)), key=lambda j: counts[j])] -= 1
            counts[i] = 1
    return counts


def mixing_ratios(ratios: dict[str, float | None]) -> list[float] | None:
    """The `sample_ratio` of each training dataset ({name: ratio or None}, config order) as a list,
    or None when no dataset sets one (mixed by size).  ValueError naming the key
    (`datasets.<name>.sample_ratio`) when one is not a finite number > 0, or when some are set
    and others not."""
    for name, ratio in ratios.items():
        if ratio is not None and not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
                                      and math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"datasets.{name}.sample_ratio is {ratio!r}: a sampling ratio is a number > 0")
    given = [name for name, ratio in ratios.items() if ratio is not None]
    if not given:
        return None
    unset = [name for name in ratios if ratios[name] is None]
    if unset:
        raise ValueError(f"datasets.{unset[0]}.sample_ratio is not set while datasets.{given[0]}.sample_ratio is: "
                         "give every training dataset a sample_ratio, or none (mixed by size)")
    return [float(ratios[name]) for name in ratios]


@functools.lru_cache(maxsize=16)
def _cycle_order(seed: int, member: int, cycle: int, size: int) -> tuple[int, ...]:
    """The order in which dataset `member` (of `size` samples) is read in its `cycle`-th cycle."""
    order = list(range(size))
    random.Random(f"{seed}:mix:{member}:{cycle}").shuffle(order)
    return tuple(order)


class MixedDataset(torch.utils.data.Dataset):
    """Several datasets addressed by draw keys from `ResumableSampler` / `LengthGroupedSampler`.

    A pass is len(self) = the sum of the members' sizes.  Without `ratios`, key k selects sample
    k % len(self) of the concatenation (each member drawn in proportion to its size).  With
    `ratios` (one per member, > 0), pass p = k // len(self) gives member m `draws_per_pass`'s
    count q_m of slots (consecutive slot numbers k % len(self), which the sampler visits in a
    seeded random order); member m's j-th slot of pass p is its draw p * q_m + j, which reads
    its samples in a random order seeded by (seed, m, cycle), one cycle per len(member) draws.
    Either way a key's sample depends on (seed, key) alone, so a resumed run (the sampler
    skipping arithmetically to its step) draws the same sequence.

    Each draw's RNG is seeded by (seed, k), so the same key always gives the same instruction
    and augmentation.  A ShardDataset member is read in shard order (held-out sets; training
    streams shards directly).  With `instructions_by_key` a draw's instruction comes from its own
    RNG seeded by (seed, k, "instruction") instead of following the augmentation draws (see
    `draw_lengths`).
    """

    def __init__(self, datasets: list[CaptionDataset | ShardDataset | FeatureCaptionDataset], seed: int,
                 instructions_by_key: bool = False, ratios: Optional[Sequence[float]] = None):
        if not datasets:
            raise DatasetError("no dataset configured")
        self.datasets = datasets
        self.seed = seed
        self.instructions_by_key = instructions_by_key
        self.offsets = []
        total = 0
        for ds in datasets:
            self.offsets.append(total)
            total += len(ds)
        self.total = total
        self.ratios = None if ratios is None else [float(r) for r in ratios]
        self.quotas: list[int] | None = None
        self.quota_offsets: list[int] = []
        if ratios is not None:
            self.quotas = draws_per_pass([len(ds) for ds in datasets], ratios)
            self.quota_offsets = [sum(self.quotas[:i]) for i in range(len(self.quotas))]
            logger.info("mixing by sample_ratio: each pass of %d draws takes %s", total,
                        ", ".join(f"{q} from {getattr(ds, 'name', i)} ({len(ds)} samples)"
                                  for i, (q, ds) in enumerate(zip(self.quotas, datasets))))

    def __len__(self) -> int:
        return self.total

    @property
    def capabilities(self) -> Capabilities:
        """What every member can do."""
        caps = capabilities_of(self.datasets[0])
        for ds in self.datasets[1:]:
            caps = caps & capabilities_of(ds)
        return caps

    @property
    def samples(self) -> list[tuple]:
        """The members' samples, concatenated (the key order without `ratios`; map-style members
        only: see `capabilities`)."""
        return [s for ds in self.datasets for s in ds.samples]

    def locate(self, key: int) -> tuple[int, int]:
        """(member number, sample index in that member) of draw key `key` (see class docstring)."""
        if self.quotas is None:
            index = key % self.total
            member = bisect.bisect_right(self.offsets, index) - 1
            return member, index - self.offsets[member]
        epoch_pass, slot = divmod(key, self.total)
        member = bisect.bisect_right(self.quota_offsets, slot) - 1
        drawn = epoch_pass * self.quotas[member] + slot - self.quota_offsets[member]
        size = len(self.datasets[member])
        cycle, position = divmod(drawn, size)
        return member, _cycle_order(self.seed, member, cycle, size)[position]

    def _member(self, key: int) -> tuple[CaptionDataset | ShardDataset | FeatureCaptionDataset, int]:
        member, index = self.locate(key)
        return self.datasets[member], index

    def _instruction_index(self, key: int, count: int) -> int:
        return random.Random(f"{self.seed}:{key}:instruction").randrange(count)

    def __getitem__(self, key: int) -> dict:
        ds, index = self._member(key)
        rng = random.Random(f"{self.seed}:{key}")
        if self.instructions_by_key:
            return ds.get(index, rng, ds.instructions[self._instruction_index(key, len(ds.instructions))])
        return ds.get(index, rng)

    def feature_caches(self) -> list[FeatureCache]:
        """The feature caches the members read (empty when they read images)."""
        return [ds.cache for ds in self.datasets if capabilities_of(ds).reads_features]

    def with_instructions_by_key(self) -> "MixedDataset":
        """A copy whose draws take their instruction from (seed, key) alone (see class docstring)."""
        twin = copy.copy(self)
        twin.instructions_by_key = True
        return twin

    def draw_lengths(self, prompt_tokenizer: PromptTokenizer) -> Callable[[int], list[int]]:
        """epoch pass p -> the token length of draw key p * len(self) + i for each i, exactly as
        `TrainCollator` will tokenize it (prompt with image tokens + target cut at max_txt_len).

        Needs `instructions_by_key`.  Captions are tokenized once, here, in batches; then each
        pass costs one seeded draw per sample (about a second for 200k samples).
        """
        if not self.instructions_by_key:
            raise ValueError("draw lengths need instructions drawn by key (MixedDataset.with_instructions_by_key)")
        start = time.perf_counter()
        tokenizer, fmt = prompt_tokenizer.tokenizer, prompt_tokenizer.format
        targets: list[list[int]] = []
        prompts: list[list[int]] = []
        for ds in self.datasets:
            if not capabilities_of(ds).group_by_length:
                raise DatasetError(f"{getattr(ds, 'name', type(ds).__name__)}: token lengths are known only for "
                                   "image-summary datasets in the xraygpt or r2gen format or a feature cache")
            texts = [ds.text_processor(caption) + fmt.end_sym for _, _, caption in ds.samples]
            lengths = []
            for i in range(0, len(texts), 4096):
                ids = tokenizer(texts[i : i + 4096], add_special_tokens=False)["input_ids"]
                lengths += [min(len(x), fmt.max_txt_len) for x in ids]
            targets.append(lengths)
            prompts.append([len(prompt_tokenizer.encode_prompt(ins)) for ins in ds.instructions])
        logger.info("token lengths of %d samples in %.1f s", self.total, time.perf_counter() - start)

        def lengths(epoch_pass: int) -> list[int]:
            out = []
            if self.quotas is not None:  # by sample_ratio: each key's member and sample (see `locate`)
                for key in range(epoch_pass * self.total, (epoch_pass + 1) * self.total):
                    member, index = self.locate(key)
                    prompt = prompts[member]
                    out.append(targets[member][index] + prompt[self._instruction_index(key, len(prompt))])
                return out
            for offset, target, prompt in zip(self.offsets, targets, prompts):
                first = epoch_pass * self.total + offset
                out += [t + prompt[self._instruction_index(first + i, len(prompt))] for i, t in enumerate(target)]
            return out

        return lengths
