"""Summaries that keep the findings: sentence rewrites, the labeler guard, the fidelity table and
command, and (with ../shared/data) the figures on real OpenI and MIMIC-CXR reports."""

import json
import re
import struct
import zlib
from pathlib import Path

import pytest

from xraygpt.data.prepare.__main__ import main as prepare_main
from xraygpt.data.prepare.cleaning import Cleaned, SentenceOutcome, clean_summary
from xraygpt.data.prepare.fidelity import fidelity_table
from xraygpt.data.prepare.guard import guard_summary
from xraygpt.data.rexrank import rule_summary
from xraygpt.data.prepare.rewrite import COMPARISON, RuleFileError, load_rules, minimal_form, rewrite_sentence
from xraygpt.data.prepare.sections import parse_report

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OPENI_REPORTS = SHARED / "openi-reports" / "ecgen-radiology"
MIMIC_EXAMPLES = SHARED / "mimic-report-examples"


@pytest.mark.parametrize("sentence,expected", [
    # comparison wording goes, the finding stays
    ("Stable mild cardiomegaly.", "Mild cardiomegaly."),
    ("Moderate right pleural effusion is unchanged.", "Moderate right pleural effusion."),
    ("Small right effusion is new.", "Small right effusion."),
    ("Interval development of a mid thoracic spine compression fracture.", "Mid thoracic spine compression fracture."),
    ("As compared to the previous radiograph, there is a new left retrocardiac opacity.",
     "There is a left retrocardiac opacity."),
    ("Since ___, the right pleural effusion has increased in size.", "The right pleural effusion."),
    ("Bibasilar atelectasis has worsened.", "Bibasilar atelectasis."),
    ("Again seen is a right upper lobe nodule.", "A right upper lobe nodule."),
    ("Left pneumothorax is slightly smaller compared to ___.", "Left pneumothorax."),
    ("Right lower lobe opacities are better seen in prior CT.", "Right lower lobe opacities."),
    ("Stable position of left subclavian central venous catheter.", "Left subclavian central venous catheter."),
    ("Heart size remains mildly enlarged.", "Heart size is mildly enlarged."),
    # partly resolved: what is left of the finding is on the image
    ("Right pleural effusion has partially resolved.", "Right pleural effusion."),
    ("The left basilar opacity has not completely resolved.", "The left basilar opacity."),
    ("Incompletely resolved right lower lobe pneumonia.", "Right lower lobe pneumonia."),
    ("Near-complete resolution of the left pneumothorax.", "Left pneumothorax."),
    # a comparison alone, or a change whose finding is gone, goes
    ("No change from prior.", ""),
    ("Compared to ___.", ""),
    ("There is no relevant change.", ""),
    ("Heart size is stable.", ""),
    ("Previously noted left pleural effusion appears to have resolved.", ""),
    ("The endotracheal tube has been removed.", ""),
    # blanks go with the words that depend on them
    ("Costophrenic XXXX are blunted, XXXX corresponding to small bilateral pleural effusions.",
     "Small bilateral pleural effusions."),
    ("There is XXXX increased opacity within the right upper lobe with possible mass.",
     "There is increased opacity within the right upper lobe with possible mass."),
    ("XXXX and soft tissues are unremarkable.", "Soft tissues are unremarkable."),
    ("Mild patchy airspace disease most XXXX representing atelectasis.",
     "Mild patchy airspace disease representing atelectasis."),
    ("Normal chest x-XXXX.", "Normal chest."),
    ("Dr. ___ was paged at ___.", ""),
    # a sentence with nothing to rewrite is kept as written
    ("There is no pneumothorax.", "There is no pneumothorax."),
])
def test_rewrites(sentence, expected):
    text, rules = rewrite_sentence(sentence)
    assert text == expected
    assert (text == sentence) == (rules == [])
    assert not COMPARISON.search(text) and "XXXX" not in text and "___" not in text


@pytest.mark.parametrize("report,expected", [
    ("Right pleural effusion has partially resolved. No pneumothorax.", "Right pleural effusion. No pneumothorax."),
    ("The left effusion has largely resolved.", "The left effusion."),
    ("Interval partial resolution of the right lower lobe consolidation.", "Right lower lobe consolidation."),
    ("The right pleural effusion has resolved. Mild cardiomegaly.", "Mild cardiomegaly."),
])
def test_partly_resolved_findings_survive_the_guard(report, expected):
    """A partly resolved finding is still there: the rules keep it and the labeler guard (which reads it
    positive) does not take it out again; a finding reported gone goes."""
    assert rule_summary(report, "") == expected


def test_minimal_form_keeps_every_other_word():
    assert minimal_form("Mild cardiomegaly unchanged.") == ("Mild cardiomegaly.", ["comparison: last resort"])
    assert minimal_form("No pneumothorax.") == ("No pneumothorax.", [])


def test_rule_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "rules.tsv"
    bad.write_text("# comment\nok\tstable\nbroken\t(unclosed\n")
    with pytest.raises(RuleFileError, match=r"rules\.tsv:3"):
        load_rules(bad)
    bad.write_text("uses a macro\t{NOWHERE}\n")
    with pytest.raises(RuleFileError, match=r"rules\.tsv:1: .*undefined macro \{NOWHERE\}"):
        load_rules(bad)
    good = tmp_path / "good.tsv"
    good.write_text("@define\tW\t(?:stable|new)\nchange word\t\\b{W}\\s+\nresolved\t\\bresolved\\b\tDROP\n")
    rules = load_rules(good)
    assert [r.name for r in rules] == ["change word", "resolved"] and rules[1].replacement is None
    assert rewrite_sentence("New effusion, resolved pneumothorax.", rules) == ("Effusion.", ["change word", "resolved"])


def test_guard_restores_a_lost_finding_and_removes_a_gained_one():
    lost = Cleaned([SentenceOutcome("Mild cardiomegaly unchanged.", "", ["comparison: change predicate"], "comparison only"),
                    SentenceOutcome("No pneumothorax.", "No pneumothorax.", [])])
    events = guard_summary("Mild cardiomegaly unchanged. No pneumothorax.", "", lost)
    assert lost.summary == "Mild cardiomegaly. No pneumothorax."
    assert events == {("Cardiomegaly", "lost"): 1, ("Cardiomegaly", "restored"): 1}
    assert lost.sentences[0].rules[-1] == "guard: restored" and lost.sentences[0].removed is None

    gained = Cleaned([SentenceOutcome("Pleural effusion has resolved.", "Pleural effusion.", ["some rule"]),
                      SentenceOutcome("Mild cardiomegaly.", "Mild cardiomegaly.", [])])
    events = guard_summary("Pleural effusion has resolved. Mild cardiomegaly.", "", gained)
    assert gained.summary == "Mild cardiomegaly."
    assert events == {("Pleural Effusion", "gained"): 1, ("Pleural Effusion", "removed"): 1}

    kept = clean_summary("Stable mild cardiomegaly. No effusion.", "No acute process.")
    assert guard_summary("Stable mild cardiomegaly. No effusion.", "No acute process.", kept) == {}


def test_fidelity_table_counts():
    table = fidelity_table(["Mild cardiomegaly. Small left effusion.", "Normal chest.", "Stable nodule."],
                           ["Mild cardiomegaly.", "Normal chest. Large effusion.", "Nodule, stable since ___."])
    rows = table["per_observation"]
    assert rows["Cardiomegaly"] == {"source_positives": 1, "kept": 1, "lost": 0, "gained": 0}
    assert rows["Pleural Effusion"] == {"source_positives": 1, "kept": 0, "lost": 1, "gained": 1}
    assert table["positives_kept"] == pytest.approx(2 / 3)
    assert table["no_finding_rate"] == {"source": pytest.approx(1 / 3), "summary": 0.0}
    assert table["summaries_with_blank"] == 1 and table["summaries_with_comparison"] == 1
    assert table["summary_words_from_report"] < 1.0


def _png() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(8) for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def placeholder_images(reports: Path, out: Path) -> Path:
    """One tiny PNG per parentImage of every XML in `reports` (the OpenI images are not needed)."""
    out.mkdir(parents=True, exist_ok=True)
    png = _png()
    for path in reports.glob("*.xml"):
        for name in re.findall(rb'<parentImage id="([^"]+)"', path.read_bytes()):
            (out / f"{name.decode()}.png").write_bytes(png)
    return out


def _xml(number: int, findings: str | bytes, impression: str | bytes, images=("CXR{n}_IM-0001-1001",)) -> bytes:
    def section(label, text):
        text = text if isinstance(text, bytes) else text.encode("utf-8")
        return b'<AbstractText Label="' + label + b'">' + text + b"</AbstractText>"
    body = section(b"FINDINGS", findings) + section(b"IMPRESSION", impression)
    body += b"".join(f'<parentImage id="{im.format(n=number)}"/>'.encode() for im in images)
    return b'<?xml version="1.0" encoding="utf-8"?><eCitation><Abstract>' + body + b"</Abstract></eCitation>"


NORMAL = "The heart is normal in size. The lungs are clear without focal consolidation or effusion."


def test_prepare_openi_bad_reports_are_counted_and_fidelity_command(tmp_path, capsys):
    reports = tmp_path / "ecgen-radiology"
    reports.mkdir()
    files = {
        1: _xml(1, "Stable mild cardiomegaly. " + NORMAL, "Stable cardiomegaly, new small left effusion."),
        2: _xml(2, NORMAL, "No acute disease."),
        3: _xml(3, "XXXX XXXX XXXX XXXX XXXX XXXX XXXX XXXX XXXX XXXX XXXX.", "XXXX XXXX."),  # only blanks
        4: _xml(4, "Unchanged from prior. No change since the previous study of ___ in the interval.",
                "Stable. Unchanged."),  # all comparison
        5: _xml(5, NORMAL.encode() + b" \xff\xfe", b"Normal."),  # not UTF-8
        6: b'<?xml version="1.0"?><eCitation><Abstract><AbstractText Label="FINDINGS">' + NORMAL.encode(),  # unclosed
        7: b'<?xml version="1.0"?><eCitation><Abstract>no sections here</Abstract></eCitation>',
    }
    for number, content in files.items():
        (reports / f"{number}.xml").write_bytes(content)
    images = placeholder_images(reports, tmp_path / "png")
    out = tmp_path / "out"
    assert prepare_main(["openi", "--reports", str(reports), "--images", str(images), "--out", str(out),
                         "--fractions", "1", "0", "0"]) == 0
    printed = capsys.readouterr().out
    assert "positives kept overall: 100.0%" in printed and "Cardiomegaly" in printed
    stats = json.loads((out / "stats.json").read_text())
    reasons = {d["id"]: d["reason"] for d in stats["dropped"] if d["unit"] == "report"}
    assert reasons["3"] == "empty summary after cleaning" and reasons["4"] == "empty summary after cleaning"
    assert reasons["5"].startswith("malformed XML") and reasons["6"].startswith("malformed XML")
    assert reasons["7"] == "no recognisable sections" and set(reasons) == {"3", "4", "5", "6", "7"}
    summary = json.loads((out / "train" / "reports.json").read_text())["1"]["summary"]
    assert summary == f"Mild cardiomegaly. {NORMAL} Cardiomegaly, small left effusion."

    assert prepare_main(["fidelity", str(out), "--json", str(tmp_path / "f.json")]) == 0
    assert "positives kept overall: 100.0%" in capsys.readouterr().out
    assert json.loads((tmp_path / "f.json").read_text())["per_observation"]["Pleural Effusion"]["kept"] == 1
    assert prepare_main(["fidelity", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: no <split>/reports.json in ")
    (out / "train" / "reports.json").write_text("[" * 100_000)
    assert prepare_main(["fidelity", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "reports.json" in error and "\n" not in error


@pytest.mark.skipif(not MIMIC_EXAMPLES.is_dir(), reason="../shared/data/mimic-report-examples is not beside the project")
def test_mimic_documentation_example_keeps_both_effusions():
    sections = parse_report((MIMIC_EXAMPLES / "docs_example.txt").read_text(encoding="utf-8"))
    cleaned = clean_summary(sections["findings"], sections["impression"])
    assert guard_summary(sections["findings"], sections["impression"], cleaned) == {}
    assert "Large left pleural effusion." in cleaned.summary and "Small right effusion." in cleaned.summary
    assert "new" not in cleaned.summary.lower().split() and not COMPARISON.search(cleaned.summary)
    example = json.loads((MIMIC_EXAMPLES / "xraygpt_readme_example.json").read_text(encoding="utf-8"))
    cleaned = clean_summary(example["input_findings"], example["input_impression"])
    assert "compression fracture" in cleaned.summary and "compression deformity" in cleaned.summary
    assert not COMPARISON.search(cleaned.summary) and "___" not in cleaned.summary


@pytest.mark.skipif(not OPENI_REPORTS.is_dir(), reason="../shared/data/openi-reports is not beside the project")
def test_openi_release_figures(tmp_path, capsys):
    """The acceptance figures of the rule summariser on the shared OpenI reports."""
    images = placeholder_images(OPENI_REPORTS, tmp_path / "png")
    out = tmp_path / "openi"
    assert prepare_main(["openi", "--reports", str(OPENI_REPORTS), "--images", str(images), "--out", str(out),
                         "--no-verify-images"]) == 0
    table = json.loads((out / "stats.json").read_text())["fidelity"]
    assert table["positives_kept"] >= 0.95
    for obs, row in table["per_observation"].items():
        if row["source_positives"] >= 15:
            assert row["kept"] / row["source_positives"] >= 0.90, obs
    assert abs(table["no_finding_rate"]["source"] - table["no_finding_rate"]["summary"]) <= 0.02
    assert table["summaries_with_blank"] == 0 and table["summaries_with_comparison"] == 0
    assert table["summary_words_from_report"] >= 0.95
    released = SHARED / "openi-sample" / "filter_cap.json"
    if released.is_file():
        theirs = {a["image_id"] for a in json.loads(released.read_text())["annotations"]}
        ours = {a["image_id"] for split in ("train", "val", "test")
                for a in json.loads((out / split / "filter_cap.json").read_text())["annotations"]}
        assert len(ours & theirs) >= 0.99 * len(ours)
        in_range = {i for i in theirs if int(i.split("_")[0]) < 2000}
        assert len(ours & in_range) >= 0.99 * len(in_range)


@pytest.mark.parametrize("answer,reason", [
    ("Mild cardiomegaly. Small left pleural effusion. No pneumothorax.", None),
    ("Mild cardiomegaly. No pneumothorax.", "lost Pleural Effusion"),
    ("Mild cardiomegaly. Small left pleural effusion. Possible pneumothorax.", "gained Pneumothorax"),
    ("Mild cardiomegaly, stable. Small left pleural effusion.", "comparison wording in answer"),
    ("Mild cardiomegaly. Small left pleural effusion, seen by Dr. ___.", "blank in answer"),
    ("   ", "empty answer"),
    ("Mild cardiomegaly. Small left pleural effusion. Patient should rest and drink tea daily.",
     "words not from the report"),
])
def test_llm_answer_rejection(answer, reason):
    from xraygpt.data.prepare.llm_summary import rejection

    source = "Mild cardiomegaly is stable. There is a new small left pleural effusion. No pneumothorax."
    assert rejection(source, answer) == reason


def test_llm_answers_replace_rule_summaries_only_when_they_pass():
    from collections import Counter

    from xraygpt.data.prepare.llm_summary import apply_llm_summaries
    from xraygpt.data.prepare.pipeline import Report
    from xraygpt.data.prepare.stats import PrepareStats

    class Answers:
        counts = Counter({"generated": 2})

        def summaries(self, triples):
            assert [t[0] for t in triples] == ["a", "b"]
            return ["Mild cardiomegaly. No effusion.", "No effusion."]

    reports = [Report(rid, {"findings": "Stable mild cardiomegaly. No effusion.", "impression": "Cardiomegaly."}, [],
                      summary="rule summary") for rid in ("a", "b")]
    stats = PrepareStats("openi", {})
    apply_llm_summaries(reports, Answers(), stats)
    assert [(r.summary, r.summarizer) for r in reports] == [("Mild cardiomegaly. No effusion.", "llm"),
                                                            ("rule summary", "rule")]
    assert stats.to_dict()["llm"] == {"generated": 2, "llm summary used": 1, "rule summary kept: lost Cardiomegaly": 1}


def test_prepare_with_the_tiny_llm_is_batched_and_resumes(tiny_assets, tmp_path, capsys):
    reports = tmp_path / "ecgen-radiology"
    reports.mkdir()
    for number in range(1, 6):
        (reports / f"{number}.xml").write_bytes(_xml(number, f"Stable mild cardiomegaly number {number}. " + NORMAL,
                                                     "No acute disease."))
    images = placeholder_images(reports, tmp_path / "png")
    cache = tmp_path / "answers.jsonl"
    args = ["openi", "--reports", str(reports), "--images", str(images), "--summarizer", "llm", "--llm",
            str(tiny_assets["llm"]), "--batch-size", "2", "--llm-max-new-tokens", "6", "--llm-cache", str(cache)]
    assert prepare_main(args + ["--out", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "stats.json").read_text())["llm"]
    assert first["generated"] == 5 and "from cache" not in first
    assert len(cache.read_text().splitlines()) == 5
    with cache.open("a") as handle:  # a run killed mid-write leaves a torn line
        handle.write('{"key": "torn')
    assert prepare_main(args + ["--out", str(tmp_path / "second")]) == 0
    second = json.loads((tmp_path / "second" / "stats.json").read_text())["llm"]
    assert second["from cache"] == 5 and "generated" not in second
    assert sum(n for k, n in second.items() if k.startswith(("llm summary", "rule summary"))) == 5
    assert cache.read_text().endswith("\n") and len(cache.read_text().splitlines()) == 5
    capsys.readouterr()
    without_llm = [a for a in args if a not in ("--llm", str(tiny_assets["llm"]))]
    assert prepare_main(without_llm + ["--out", str(tmp_path / "third")]) == 2
    assert capsys.readouterr().err.strip() == "error: --summarizer llm needs --llm PATH (a local Hugging Face model folder)"
    missing = [str(tmp_path / "no-model") if a == str(tiny_assets["llm"]) else a for a in args]
    assert prepare_main(missing + ["--out", str(tmp_path / "fourth")]) == 2
    assert capsys.readouterr().err.strip() == f"error: summariser LLM folder {tmp_path / 'no-model'} does not exist"
    assert not (tmp_path / "third").exists() and not (tmp_path / "fourth").exists()
