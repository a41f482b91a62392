"""Report text: section parsing, the paper's filters, summary cleaning, splits (reports written here)."""

import pytest

from xraygpt.data.prepare.cleaning import clean_summary, filter_reason, split_sentences
from xraygpt.data.prepare.sections import canonical_sections, parse_report
from xraygpt.data.prepare.splits import leaked_groups, split_by_group

FULL_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with two days of cough  // evaluate for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 The cardiomediastinal silhouette is within normal limits.  There is no focal
 consolidation, pleural effusion or pneumothorax.
 Note: the osseous structures are intact.

 IMPRESSION:  No acute cardiopulmonary process.
"""


def test_full_report_sections():
    sections = parse_report(FULL_REPORT)
    assert sections["preamble"] == "FINAL REPORT"
    assert sections["examination"] == "CHEST (PA AND LAT)"
    assert sections["indication"] == "___F with two days of cough // evaluate for pneumonia"
    assert sections["technique"] == "Chest PA and lateral" and sections["comparison"] == "None."
    # "Note:" in mixed case is not a header, so it stays in the findings
    assert sections["findings"] == ("The cardiomediastinal silhouette is within normal limits. There is no focal "
                                    "consolidation, pleural effusion or pneumothorax. Note: the osseous structures are intact.")
    assert sections["impression"] == "No acute cardiopulmonary process."


def test_merged_renamed_misspelled_and_missing_sections():
    merged = parse_report("FINDINGS AND IMPRESSION: Heart size is normal. Lungs are clear.")
    assert merged["findings"] == merged["impression"] == "Heart size is normal. Lungs are clear."
    assert parse_report("FINDINGS/IMPRESSION:\n Lungs clear.")["impression"] == "Lungs clear."
    renamed = parse_report("PA AND LATERAL VIEWS OF THE CHEST: Lungs are clear.\nCONCLUSION: Normal chest.\n"
                           "REASON FOR EXAM: cough")
    assert renamed == {"findings": "Lungs are clear.", "impression": "Normal chest.", "indication": "cough"}
    assert parse_report("IMPRESION: Normal.\nFindngs: Clear lungs.") == {"impression": "Normal.", "findings": "Clear lungs."}
    missing = parse_report("INDICATION: cough\nIMPRESSION: No pneumonia.")
    assert "findings" not in missing and missing["impression"] == "No pneumonia."
    assert parse_report("WET READ: abc\nIMPRESSION: x y")["wet read"] == "abc"  # unknown upper-case header
    assert parse_report("the lungs are clear, no header anywhere") == {"preamble": "the lungs are clear, no header anywhere"}
    repeated = parse_report("IMPRESSION: One.\nADDENDUM: a\nIMPRESSION: Two.")
    assert repeated["impression"] == "One. Two."
    assert canonical_sections("Impression") == ("impression",) and canonical_sections("indication") == ("indication",)


@pytest.mark.parametrize("sections,reason", [
    ({"preamble": "free text only"}, "no recognisable sections"),
    ({"impression": "No acute process."}, "no findings"),
    ({"findings": "one two three four five six seven eight nine ten"}, "no impression"),
    ({"findings": "one two three four five six seven eight nine", "impression": "Normal chest."},
     "findings shorter than 10 words"),
    ({"findings": "one two three four five six seven eight nine ten", "impression": "Normal."},
     "impression shorter than 2 words"),
    ({"findings": "one two three four five six seven eight nine ten", "impression": "Normal chest."}, None),
])
def test_paper_filters(sections, reason):
    assert filter_reason(sections) == reason


def test_sentences_keep_abbreviations_and_drop_numbering():
    assert split_sentences("1. Small left effusion. 2. No pneumothorax. Dr. Smith was paged. Size 1.5 cm") == [
        "Small left effusion.", "No pneumothorax.", "Dr. Smith was paged.", "Size 1.5 cm"]


@pytest.mark.parametrize("findings,impression,summary,rules", [
    # comparisons with prior studies are rewritten out, the finding kept; a comparison alone goes
    ("Compared to the prior study, the effusion is smaller. The lungs are clear. No change from prior.",
     "Unchanged cardiomegaly.", "The effusion. The lungs are clear. Cardiomegaly.", ["comparison only"]),
    # de-identification blanks: parenthesis removed, a blank with the words that depend on it
    ("A small effusion (seen on ___) is present. Dr. ___ was paged at ___. XXXX XXXX are normal.", "Effusion.",
     "A small effusion is present. Effusion.", ["communication", "de-identification blank only"]),
    # view / technique statements; a sentence with a view and a finding verb stays
    ("PA and lateral views of the chest. Frontal and lateral radiographs were obtained. "
     "The lateral view shows a small effusion.", "Small effusion",
     "The lateral view shows a small effusion. Small effusion.", ["view/technique", "view/technique"]),
    # repeated sentences (merged section) are kept once, full stops added
    ("Heart size is normal. Lungs are clear", "Heart size is normal. Lungs are clear",
     "Heart size is normal. Lungs are clear.", ["repeated sentence", "repeated sentence"]),
])
def test_cleaning_examples(findings, impression, summary, rules):
    cleaned = clean_summary(findings, impression)
    assert cleaned.summary == summary
    assert [rule for rule, _ in cleaned.removed] == rules
    assert "___" not in cleaned.summary and "XXXX" not in cleaned.summary and "  " not in cleaned.summary


def test_split_by_group_is_seeded_and_exact():
    groups = [str(i) for i in range(100)]
    split = split_by_group(groups + groups[:10], (0.7, 0.1, 0.2), seed=3)
    assert len(split) == 100
    assert [list(split.values()).count(s) for s in ("train", "val", "test")] == [70, 10, 20]
    assert split == split_by_group(reversed(groups), (0.7, 0.1, 0.2), seed=3)
    assert split != split_by_group(groups, (0.7, 0.1, 0.2), seed=4)
    with pytest.raises(ValueError, match="summing to 1"):
        split_by_group(groups, (0.7, 0.1, 0.1), seed=0)


def test_leaked_groups():
    assert leaked_groups([("a", "train"), ("a", "train"), ("b", "val")]) == {}
    assert leaked_groups([("a", "train"), ("a", "test"), ("b", "val")]) == {"a": ["test", "train"]}
