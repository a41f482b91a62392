"""Visual question answering metrics: closed-question accuracy, open-question exact match and token recall.

Rows are predictions.jsonl rows of VQA samples: {image_id (the question's id), prediction,
reference (the answer), vqa: {answer_type: closed | open, language: en | zh, question_type,
source}} (`xraygpt.data.vqa` puts `vqa` in each sample; the evaluator copies it into the row).

Answers are compared after `normalise_answer`: `clean_text` (NFKC, control and format
characters dropped), case folded, punctuation and symbols as spaces (a `.` or `,` between two
digits kept: "2.5"), the English articles a / an / the dropped and the number words zero to
twenty written as digits.  `answer_tokens` cuts a normalised answer into tokens: each CJK
character (`xraygpt.languages`) is a token (Chinese is scored by characters), and each run of other non-space
characters is one (English words; "MRI" inside a Chinese answer), so a mixed-script answer is
tokenized by script.

- Closed questions (`answer_type: closed`), accuracy over samples:
  - a yes/no reference (normalised, "yes" / "no", or "是" / "是的" / "对" / "有" and "否" / "不是" /
    "不" / "没有" / "无"): the prediction's polarity must equal the reference's.  The
    prediction's polarity is that of its first word (its leading CJK phrase for Chinese,
    the longest phrase first: "不是" before "是"), else, when exactly one of the English words
    yes / no occurs in it, that one; else it has none and is wrong;
  - any other reference ("MRI", "left", "2"): exact match, i.e. the same token sequence.
- Open questions: exact match (the same token sequence) and token recall (the share of the
  reference's distinct tokens found among the prediction's tokens), both means over samples.

Each figure is reported over all rows, per language and per source, each split by answer type,
with its count (a figure over no sample is null).  A row is skipped and counted, by reason,
when it is malformed (no id, a non-text prediction or reference, no `vqa` with a known answer
type and a language), repeats an id, or has a reference with no token; an empty prediction is
scored (wrong, recall 0) and counted.
"""

from __future__ import annotations

import unicodedata

from xraygpt.evaluation.text import clean_text
from xraygpt.languages import CJK_CHARACTER

ANSWER_TYPES = ("closed", "open")
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {w: str(n) for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
YES = ("yes", "是的", "是", "对", "有")
NO = ("no", "不是", "没有", "否", "不", "无")
POLARITY = {**{w: "yes" for w in YES}, **{w: "no" for w in NO}}
_LEADING_CJK = sorted((w for w in POLARITY if not w.isascii()), key=len, reverse=True)
DEFINITIONS = {
    "closed_accuracy": "yes/no references: the prediction's polarity (its first word, else the one yes/no word "
                       "it holds) equals the reference's; other references: exact match after normalisation",
    "exact_match": "the normalised prediction's tokens equal the reference's",
    "token_recall": "share of the reference's distinct tokens found in the prediction (words; CJK characters "
                    "one token each)",
    "normalisation": "NFKC, case folded, punctuation as spaces, articles dropped, number words as digits",
}


def _strip_punctuation(text: str) -> str:
    out = []
    for i, ch in enumerate(text):
        between_digits = ch in ".," and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        out.append(" " if unicodedata.category(ch)[0] in "PS" and not between_digits else ch)
    return "".join(out)


def normalise_answer(text: str) -> str:
    """`text` normalised for comparison (see module docstring); "" when nothing remains."""
    words = _strip_punctuation(clean_text(text).casefold()).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def answer_tokens(text: str) -> list[str]:
    """Tokens of `normalise_answer(text)`: CJK characters one by one, other runs of non-space characters whole."""
    return CJK_CHARACTER.sub(lambda m: f" {m.group(0)} ", normalise_answer(text)).split()


def polarity(text: str) -> str | None:
    """"yes" / "no" for an answer that says so (see module docstring), else None."""
    words = normalise_answer(text).split()
    if not words:
        return None
    if words[0] in POLARITY:
        return POLARITY[words[0]]
    compact = "".join(words)
    leading = next((w for w in _LEADING_CJK if compact.startswith(w)), None)
    if leading is not None:
        return POLARITY[leading]
    found = {w for w in words if w in ("yes", "no")}
    return POLARITY[found.pop()] if len(found) == 1 else None


def reference_polarity(reference: str) -> str | None:
    """"yes" / "no" when the whole normalised reference is a yes/no word, else None."""
    return POLARITY.get("".join(normalise_answer(reference).split()))


def score_row(prediction: str, reference: str, answer_type: str) -> dict:
    """{correct (closed) or exact_match and token_recall (open), yes_no (closed)} for one answer."""
    pred_tokens, ref_tokens = answer_tokens(prediction), answer_tokens(reference)
    if answer_type == "closed":
        ref_polarity = reference_polarity(reference)
        if ref_polarity is not None:
            return {"yes_no": True, "correct": polarity(prediction) == ref_polarity}
        return {"yes_no": False, "correct": pred_tokens == ref_tokens}
    distinct = set(ref_tokens)
    return {"exact_match": pred_tokens == ref_tokens, "token_recall": len(distinct & set(pred_tokens)) / len(distinct)}


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _block(scores: list[tuple[str, dict]]) -> dict:
    """Figures of (answer type, score_row result) pairs, by answer type, with counts."""
    closed = [s for t, s in scores if t == "closed"]
    open_ = [s for t, s in scores if t == "open"]
    yes_no = [s["correct"] for s in closed if s["yes_no"]]
    other = [s["correct"] for s in closed if not s["yes_no"]]
    return {
        "count": len(scores),
        "closed": {"count": len(closed), "accuracy": _mean([s["correct"] for s in closed]),
                   "yes_no": {"count": len(yes_no), "accuracy": _mean(yes_no)},
                   "other": {"count": len(other), "accuracy": _mean(other)}},
        "open": {"count": len(open_), "exact_match": _mean([s["exact_match"] for s in open_]),
                 "token_recall": _mean([s["token_recall"] for s in open_])},
    }


def _usable(row: dict) -> bool:
    vqa = row.get("vqa")
    return (row.get("image_id") is not None and isinstance(row.get("prediction"), str)
            and isinstance(row.get("reference"), str) and isinstance(vqa, dict)
            and vqa.get("answer_type") in ANSWER_TYPES and isinstance(vqa.get("language"), str))


def vqa_metrics(rows: list[dict]) -> dict:
    """metrics.json's `vqa` entry for VQA prediction rows (see module docstring)."""
    skipped: dict[str, list[str]] = {}
    seen: set[str] = set()
    kept: list[tuple[dict, dict]] = []
    for n, row in enumerate(rows):
        image_id = str(row.get("image_id", f"#{n}"))
        if not _usable(row):
            reason = "malformed row"
        elif image_id in seen:
            reason = "duplicate id"
        elif not answer_tokens(row["reference"]):
            reason = "empty reference"
        else:
            seen.add(image_id)
            kept.append((row, score_row(row["prediction"], row["reference"], row["vqa"]["answer_type"])))
            continue
        skipped.setdefault(reason, []).append(image_id)
    empty = [str(r["image_id"]) for r, _ in kept if not answer_tokens(r["prediction"])]

    def grouped(key: str) -> dict:
        groups: dict[str, list[tuple[str, dict]]] = {}
        for row, score in kept:
            groups.setdefault(str(row["vqa"].get(key)), []).append((row["vqa"]["answer_type"], score))
        return {name: _block(scores) for name, scores in sorted(groups.items())}

    return {
        "num_scored": len(kept),
        "skipped": {"count": sum(len(v) for v in skipped.values()), "by_reason": skipped},
        "empty_predictions": {"count": len(empty), "ids": empty},
        "all": _block([(row["vqa"]["answer_type"], score) for row, score in kept]),
        "by_language": grouped("language"),
        "by_source": grouped("source"),
        "definitions": DEFINITIONS,
    }


def _figure(value: float | None) -> str:
    return f"{value:>9.4f}" if value is not None else f"{'-':>9}"


def format_vqa_metrics(metrics: dict) -> str:
    """A readable table of `vqa_metrics` output: one line per group (all, each language, each source)."""
    skipped = metrics["skipped"]
    detail = ", ".join(f"{len(ids)} {reason}" for reason, ids in skipped["by_reason"].items())
    lines = [f"VQA: {metrics['num_scored']} questions scored; {skipped['count']} skipped"
             + (f" ({detail})" if detail else "") + f"; {metrics['empty_predictions']['count']} empty predictions",
             f"{'group':<16}{'closed':>8}{'acc':>9}{'yes/no':>8}{'acc':>9}{'open':>8}{'exact':>9}{'recall':>9}"]
    groups = [("all", metrics["all"])] + [(f"lang {k}", v) for k, v in metrics["by_language"].items()] + [
        (f"src {k}", v) for k, v in metrics["by_source"].items()]
    for name, block in groups:
        closed, open_ = block["closed"], block["open"]
        lines.append(f"{name:<16}{closed['count']:>8}{_figure(closed['accuracy'])}{closed['yes_no']['count']:>8}"
                     f"{_figure(closed['yes_no']['accuracy'])}{open_['count']:>8}{_figure(open_['exact_match'])}"
                     f"{_figure(open_['token_recall'])}")
    return "\n".join(lines)
