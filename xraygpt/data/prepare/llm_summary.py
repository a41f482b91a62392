"""The paper's LLM summariser, run locally: findings + impression rewritten by a chat model.

XrayGPT summarised every report with GPT-3.5-turbo.  Here any local Hugging Face causal LM
folder does it (`prepare openi|mimic --summarizer llm --llm PATH`), with the prompt of
`prompts/summarize_report.txt` ({findings} and {impression} filled in; the tokenizer's chat
template wraps it when the tokenizer has one):
- transformers `generate`, greedy, `batch_size` reports at a time (left padding, longest source
  first); or vLLM when it is installed and a CUDA GPU is present (`backend: auto`) or asked for
  (`backend: vllm`).  The vLLM path follows vLLM's `LLM.generate` API and has not yet been run.
- resumable: every answer is appended, one JSON line per report, to a cache file keyed by the
  model folder, the prompt and the report's text; a rerun generates only what the cache lacks
  (a torn last line from a killed run is ignored and rewritten).
- guarded: an answer is used only when it is non-empty, holds no blank or comparison wording,
  is made of the report's own words (at least `MIN_WORDS_FROM_REPORT` of its words occur in
  findings + impression), and keeps every observation of the report at its strength without
  adding one (the labeler guard's test); otherwise the report keeps its rule summary and the
  reason is counted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections import Counter
from pathlib import Path

import torch

from xraygpt.atomic import append_lines, drop_torn_tail
from xraygpt.data.prepare.fidelity import words_from_report
from xraygpt.data.prepare.guard import default_labeler, strength, stronger, weaker
from xraygpt.data.prepare.rewrite import BLANK, COMPARISON
from xraygpt.evaluation.chexpert_rules import OBSERVATIONS

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = Path(__file__).resolve().parents[3] / "prompts" / "summarize_report.txt"
BACKENDS = ("auto", "transformers", "vllm")
MIN_WORDS_FROM_REPORT = 0.8


class LLMSummaryError(ValueError):
    """An LLM summariser that cannot run: a missing folder or prompt, a prompt without its fields."""


def read_prompt(path: Path) -> str:
    """The prompt template; it must hold {findings} and {impression}."""
    if not path.is_file():
        raise LLMSummaryError(f"summary prompt {path} does not exist")
    template = path.read_text(encoding="utf-8")
    if "{findings}" not in template or "{impression}" not in template:
        raise LLMSummaryError(f"summary prompt {path} must hold {{findings}} and {{impression}}")
    return template


class SummaryCache:
    """Answers already generated, as JSON lines {"key", "report_id", "summary"} in one file."""

    def __init__(self, path: Path):
        self.path = path
        self.answers: dict[str, str] = {}
        if path.is_file():
            if drop_torn_tail(path):
                logger.warning("%s: cut a torn last line left by a killed run", path)
            for line in path.read_bytes().splitlines():
                try:
                    entry = json.loads(line)
                    self.answers[entry["key"]] = str(entry["summary"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s: skipping an unreadable line", path)

    def add(self, entries: list[dict]) -> None:
        """Append answers, one whole line each, flushed before returning."""
        append_lines(self.path, [json.dumps(e, ensure_ascii=False) for e in entries])
        self.answers.update((e["key"], e["summary"]) for e in entries)


def rejection(source: str, answer: str) -> str | None:
    """Why an LLM answer cannot replace the rule summary (None: it can); see module docstring."""
    if not answer.strip():
        return "empty answer"
    if BLANK.search(answer):
        return "blank in answer"
    if COMPARISON.search(answer):
        return "comparison wording in answer"
    hits, words = words_from_report(source, answer)
    if hits < MIN_WORDS_FROM_REPORT * words:
        return "words not from the report"
    labeler = default_labeler()
    want, got = strength(labeler.label(source)), strength(labeler.label(answer))
    lost, gained = weaker(want, got), stronger(want, got)
    if lost:
        return f"lost {OBSERVATIONS[lost[0]]}"
    return f"gained {OBSERVATIONS[gained[0]]}" if gained else None


class LLMSummarizer:
    """Summaries of (findings, impression) pairs by a local causal LM (see module docstring).

    Args:
        path: the model folder (config, weights, tokenizer).
        cache_path: the JSON-lines answer cache (created when missing).
        prompt_path: the prompt template file.
        batch_size: reports per `generate` call.
        max_new_tokens: the longest answer, in tokens.
        backend: `auto`, `transformers` or `vllm`.
    """

    def __init__(self, path: Path, cache_path: Path, prompt_path: Path = DEFAULT_PROMPT, batch_size: int = 8,
                 max_new_tokens: int = 256, backend: str = "auto"):
        if not Path(path).is_dir():
            raise LLMSummaryError(f"summariser LLM folder {path} does not exist")
        if backend not in BACKENDS:
            raise LLMSummaryError(f"unknown LLM backend {backend!r}; known: {', '.join(BACKENDS)}")
        if batch_size < 1:
            raise LLMSummaryError(f"--batch-size must be at least 1, got {batch_size}")
        self.path, self.batch_size, self.max_new_tokens = Path(path), batch_size, max_new_tokens
        self.template = read_prompt(Path(prompt_path))
        self.cache = SummaryCache(Path(cache_path))
        vllm_ok = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
        if backend == "vllm" and not vllm_ok:
            raise LLMSummaryError("--llm-backend vllm needs the vllm package and a CUDA GPU")
        self.backend = "vllm" if backend == "vllm" or (backend == "auto" and vllm_ok) else "transformers"
        self._engine = None
        self.counts: Counter[str] = Counter()

    def key(self, findings: str, impression: str) -> str:
        text = json.dumps([self.path.name, self.template, findings, impression], ensure_ascii=False)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def summaries(self, reports: list[tuple[str, str, str]]) -> list[str]:
        """Answers for (report id, findings, impression) triples, in order; generated or cached."""
        keys = [self.key(f, i) for _, f, i in reports]
        todo = [(k, r) for k, r in zip(keys, reports) if k not in self.cache.answers]
        todo = list(dict(todo).items())  # a report text met twice is generated once
        if len(reports) > len(todo):
            self.counts["from cache"] += len(reports) - len(todo)
        todo.sort(key=lambda item: -len(item[1][1]) - len(item[1][2]))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            prompts = [self.prompt(f, i) for _, (_, f, i) in batch]
            answers = self._generate(prompts)
            self.cache.add([{"key": k, "report_id": rid, "summary": a} for (k, (rid, _, _)), a in zip(batch, answers)])
            self.counts["generated"] += len(batch)
            logger.info("llm summaries: %d of %d generated", min(start + self.batch_size, len(todo)), len(todo))
        return [self.cache.answers[k] for k in keys]

    def prompt(self, findings: str, impression: str) -> str:
        text = self.template.format(findings=findings, impression=impression)
        tokenizer = self._load()[1] if self.backend == "transformers" else None
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return text

    def _load(self):
        if self._engine is None:
            if self.backend == "vllm":
                from vllm import LLM  # optional; see module docstring
                self._engine = (LLM(model=str(self.path), seed=0), None)
            else:
                from xraygpt.models.llm import load_llm
                model, tokenizer = load_llm(str(self.path))
                model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
                tokenizer.padding_side = "left"
                self._engine = (model, tokenizer)
        return self._engine

    @torch.no_grad()
    def _generate(self, prompts: list[str]) -> list[str]:
        model, tokenizer = self._load()
        if self.backend == "vllm":
            from vllm import SamplingParams
            outputs = model.generate(prompts, SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens),
                                     use_tqdm=False)
            return [" ".join(o.outputs[0].text.split()) for o in outputs]
        batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
        out = model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [" ".join(a.split()) for a in answers]


def apply_llm_summaries(reports: list, summarizer: LLMSummarizer, stats) -> None:
    """Replace each report's rule summary by its LLM answer where `rejection` allows; count why not."""
    answers = summarizer.summaries([(r.report_id, r.sections["findings"], r.sections["impression"]) for r in reports])
    for report, answer in zip(reports, answers):
        source = f"{report.sections['findings']} {report.sections['impression']}"
        reason = rejection(source, answer)
        if reason is None:
            report.summary, report.summarizer = answer, "llm"
            stats.llm["llm summary used"] += 1
        else:
            stats.llm[f"rule summary kept: {reason}"] += 1
    stats.llm.update(summarizer.counts)
    logger.info("llm summaries: %s", dict(stats.llm))
