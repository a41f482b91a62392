"""Stage-0 text data: conversation files and summary files, validated at start-up.

Conversation file format (JSON list, or JSONL with one record per line; UTF-8):

    {"id": "c1", "turns": [{"role": "system", "content": "..."},        # optional, first only
                           {"role": "user", "content": "..."},
                           {"role": "assistant", "content": "..."}, ...]}

Roles alternate user/assistant and end with an assistant turn; the loss covers assistant turns.
ShareGPT-style records (`{"id", "conversations": [{"from": "human"|"gpt"|"system", "value"}]}`)
are read as the same thing.  Summary files (XrayGPT's `filter_cap.json`) become one
conversation per summary: a sampled instruction (its `<Img><ImageHere></Img>` removed) and the
summary as the answer.

Bad records are counted per reason (invalid JSON, not UTF-8, missing role, unknown role, bad
role order, empty turn, longer than the context), logged once with the first ids, and skipped;
zero usable conversations is an error.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import torch

from xraygpt.constants import IMAGE_PLACEHOLDER
from xraygpt.data.formats import Capabilities, DatasetError, read_annotations
from xraygpt.prompting import PromptTokenizer, load_instructions
from xraygpt.registry import register

logger = logging.getLogger(__name__)

ROLE_ALIASES = {"user": "user", "human": "user", "doctor": "user", "assistant": "assistant", "gpt": "assistant",
                "system": "system"}


def read_records(path: Path, skipped: dict[str, list[str]]) -> list[tuple[str, object]]:
    """(id, raw record) pairs from a JSON list or JSONL file; unreadable lines counted in `skipped`."""
    if not path.is_file():
        raise DatasetError(f"conversation file {path} does not exist")
    raw = path.read_bytes()
    records: list[tuple[str, object]] = []
    stripped = raw.lstrip()
    if stripped.startswith(b"["):
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"conversation file {path} is not valid UTF-8 JSON: {exc}") from exc
        return [(str(r.get("id", f"#{i}")) if isinstance(r, dict) else f"#{i}", r) for i, r in enumerate(data)]
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            skipped["not UTF-8"].append(f"line {lineno}")
            continue
        except json.JSONDecodeError:
            skipped["invalid JSON"].append(f"line {lineno}")
            continue
        rid = str(record.get("id", f"line {lineno}")) if isinstance(record, dict) else f"line {lineno}"
        records.append((rid, record))
    return records


def parse_turns(record: object) -> tuple[str, list[tuple[str, str]]] | str:
    """(system, [(user, assistant), ...]) from a record, or the reason it is unusable."""
    if not isinstance(record, dict):
        return "malformed record"
    raw_turns = record.get("turns", record.get("conversations"))
    if not isinstance(raw_turns, list) or not raw_turns:
        return "no turns"
    turns = []
    for t in raw_turns:
        if not isinstance(t, dict):
            return "malformed record"
        role = t.get("role", t.get("from"))
        content = t.get("content", t.get("value"))
        if role is None:
            return "missing role"
        if str(role).lower() not in ROLE_ALIASES:
            return "unknown role"
        if not isinstance(content, str) or not content.strip():
            return "empty turn"
        turns.append((ROLE_ALIASES[str(role).lower()], content.strip()))
    system = ""
    if turns[0][0] == "system":
        system = turns.pop(0)[1] + " "
    roles = [r for r, _ in turns]
    if not turns or len(roles) % 2 or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles)):
        return "bad role order"
    return system, [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns), 2)]


class ConversationDataset(torch.utils.data.Dataset):
    """Validated conversations: `get(i, rng)` -> {"image_id": id, "system", "turns"}."""

    capabilities = Capabilities(map_style=True, group_by_length=False, cache_features=False, reads_features=False)

    def __init__(self, name: str, conversations: list[tuple[str, str, list[tuple[str, str]]]]):
        self.name = name
        self.conversations = conversations

    def __len__(self) -> int:
        return len(self.conversations)

    def get(self, index: int, rng: random.Random) -> dict:
        cid, system, turns = self.conversations[index]
        return {"image_id": cid, "system": system, "turns": turns}

    def __getitem__(self, index: int) -> dict:
        return self.get(index, random.Random(index))


def _finalise(name: str, candidates, skipped: dict[str, list[str]], total: int,
              prompt_tokenizer: PromptTokenizer, max_len: int) -> ConversationDataset:
    kept = []
    for cid, system, turns in candidates:
        ids, _ = prompt_tokenizer.encode_dialogue(turns, system)
        if len(ids) > max_len:
            skipped["longer than the context"].append(cid)
            continue
        kept.append((cid, system, turns))
    for reason, ids in skipped.items():
        if ids:
            logger.warning("%s: skipped %d of %d conversations (%s), first: %s", name, len(ids), total, reason, ", ".join(ids[:5]))
    if not kept:
        raise DatasetError(f"{name}: no usable conversation")
    logger.info("%s: %d conversations", name, len(kept))
    return ConversationDataset(name, kept)


def _reasons() -> dict[str, list[str]]:
    return {r: [] for r in ("invalid JSON", "not UTF-8", "malformed record", "no turns", "missing role",
                            "unknown role", "empty turn", "bad role order", "no context", "longer than the context")}


@register("dataset", "conversations")
def build_conversations(path: str, prompt_tokenizer: PromptTokenizer, max_len: int = 2048) -> ConversationDataset:
    """Conversations from a JSON/JSONL file (see module docstring).

    Args:
        path: the file.
        max_len: the context limit in tokens; longer conversations are skipped and counted.
    """
    skipped = _reasons()
    records = read_records(Path(path), skipped)
    candidates = []
    for cid, record in records:
        parsed = parse_turns(record)
        if isinstance(parsed, str):
            skipped[parsed].append(cid)
        else:
            candidates.append((cid, parsed[0], parsed[1]))
    total = len(records) + len(skipped["invalid JSON"]) + len(skipped["not UTF-8"])
    return _finalise(f"conversations {path}", candidates, skipped, total, prompt_tokenizer, max_len)


@register("dataset", "summaries")
def build_summaries(
    root: str,
    prompt_tokenizer: PromptTokenizer,
    ann_file: str = "filter_cap.json",
    prompt_path: str = "prompts/alignment.txt",
    max_len: int = 2048,
    max_samples: int = 0,
    seed: int = 0,
    context_file: str | None = None,
    context_slot_length: int = 0,
    context_slot_repeats: int = 1,
    context_slot_filler: str = "o",
    context_slot_shuffle: float = 0.0,
) -> ConversationDataset:
    """One conversation per summary of an XrayGPT `filter_cap.json` (images are not needed).

    Args:
        root: folder holding `ann_file`.
        prompt_path: instructions; one is sampled per summary (seeded).  Without a context,
            the image (`<Img><ImageHere></Img>`) is removed from it.
        max_len: the context limit in tokens.
        max_samples: use only the first N summaries (0 = all).
        seed: seeds the instruction choice.
        context_file: JSON {image_id: text or list of labels} (e.g. a synthetic split's
            `labels.json`, or CheXpert labels): that text is placed in the image slot,
            `<Img>text</Img>`, so the LLM learns to read the slot (an empty list reads
            "normal").  Relative paths are taken inside `root`.
        context_slot_length: when > 0 and the context is a label list, the slot holds this many
            items: each label at a random (seeded) position, `context_slot_filler` elsewhere, like
            image tokens in which a few patches show a finding and the rest show background.
        context_slot_repeats: with `context_slot_length`, each label fills this many positions
            (as a finding covers several patches).
        context_slot_filler: the background item; it should be one token of the LLM's tokenizer
            (a warning says when it is not), so the slot lines up token for token with the
            image tokens that replace it in stages 1-2.
        context_slot_shuffle: the fraction of summaries (chosen with `seed`) whose slot items are
            put in a random order, so that where an item sits never suffices and the LLM must
            read which word it is (for a slot laid out like the image, e.g. the embedded
            default's slots.json, where position alone would say most findings).
    """
    annotations = read_annotations(Path(root) / ann_file)
    if max_samples > 0:
        annotations = annotations[:max_samples]
    if not 0.0 <= context_slot_shuffle <= 1.0:
        raise DatasetError(f"context_slot_shuffle must be in [0, 1], got {context_slot_shuffle}")
    if context_slot_repeats < 1:
        raise DatasetError(f"context_slot_repeats must be >= 1, got {context_slot_repeats}")
    if context_file and context_slot_length > 0:
        pieces = len(prompt_tokenizer.tokenizer(context_slot_filler, add_special_tokens=False)["input_ids"])
        if pieces != 1:
            logger.warning("context_slot_filler %r is %d tokens in this tokenizer; a one-token filler lines the slot "
                           "up with the image tokens", context_slot_filler, pieces)
    contexts = (_read_context(Path(root), context_file, context_slot_length, seed, context_slot_repeats,
                              context_slot_filler) if context_file else None)
    if contexts is not None and context_slot_shuffle > 0:
        contexts = _shuffle_slots(contexts, context_slot_shuffle, seed)
    instructions = load_instructions(prompt_path)
    if contexts is None:
        instructions = [_text_only(i) for i in instructions]
    rng = random.Random(seed)
    skipped = _reasons()
    candidates = []
    for n, ann in enumerate(annotations):
        cid = str(ann.get("image_id", f"#{n}")) if isinstance(ann, dict) else f"#{n}"
        caption = ann.get("caption") if isinstance(ann, dict) else None
        if not isinstance(caption, str) or not caption.strip():
            skipped["empty turn"].append(cid)
            continue
        instruction = rng.choice(instructions)
        if contexts is not None:
            if cid not in contexts:
                skipped["no context"].append(cid)
                continue
            instruction = instruction.replace(IMAGE_PLACEHOLDER, contexts[cid])
        candidates.append((cid, "", [(instruction, re.sub(r"\s+", " ", caption).strip())]))
    return _finalise(f"summaries {root}", candidates, skipped, len(annotations), prompt_tokenizer, max_len)


def _shuffle_slots(contexts: dict[str, str], fraction: float, seed: int) -> dict[str, str]:
    """`contexts` with the space-separated items of round(fraction * n) of them (seeded) permuted."""
    rng = random.Random(f"slot-shuffle:{seed}")
    keys = sorted(contexts)
    chosen = set(rng.sample(keys, int(round(fraction * len(keys)))))
    out = {}
    for key in keys:
        items = contexts[key].split(" ")
        if key in chosen:
            rng.shuffle(items)
        out[key] = " ".join(items)
    return out


def _read_context(root: Path, context_file: str, slot_length: int = 0, seed: int = 0,
                  repeats: int = 1, filler: str = "o") -> dict[str, str]:
    """{image_id: slot text} from a JSON mapping to a string or a list of labels (see build_summaries)."""
    path = Path(context_file)
    path = path if path.is_absolute() or path.is_file() else root / path
    if not path.is_file():
        raise DatasetError(f"context file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"context file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"context file {path} must map image ids to text or label lists")
    out = {}
    rng = random.Random(f"context:{seed}")
    for key, value in data.items():
        if isinstance(value, list):
            words = [str(v).replace("_", " ") for v in value]
            if slot_length > 0:
                words = [w for w in words for _ in range(repeats)]
                slot = [filler] * max(slot_length, len(words))
                for word, pos in zip(words, rng.sample(range(len(slot)), len(words))):
                    slot[pos] = word
                value = " ".join(slot)
            else:
                value = ", ".join(words) or "normal"
        out[str(key)] = str(value)
    return out


def _text_only(instruction: str) -> str:
    """An image instruction without its image: `<Img><ImageHere></Img>` and the placeholder removed."""
    return re.sub(r"\s+", " ", instruction.replace("<Img>", "").replace("</Img>", "").replace(IMAGE_PLACEHOLDER, "")).strip()
