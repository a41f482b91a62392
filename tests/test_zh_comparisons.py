"""Chinese comparison removal (xraygpt.data.zh_comparisons) and its use by study targets: realistic
chest X-ray report sentences lose their comparisons with the prior study and keep every finding; a
finding reported gone goes; normal statements stay; a zh source's targets shown without a prior hold
no comparison, with `keep_comparisons` and a prior shown they are as written; English is unchanged."""

from __future__ import annotations

import logging
import re

import pytest

from xraygpt.data.rexrank import rule_summary
from xraygpt.data.studies import StudyFile, StudyRecord
from xraygpt.data.study_dataset import StudyDataset, removes_comparisons, study_target
from xraygpt.data.study_prompts import sections_text
from xraygpt.data.zh_comparisons import (mentions_comparison, remove_zh_comparisons, states_nothing,
                                         zh_sections_without_comparisons)

# (section as written, what remains without comparisons)
REWRITES = [
    # a sentence that only compares goes
    ("与前片比较无明显变化。", ""),
    ("较前大致相仿。", ""),
    ("对比2019-03-01片，病变大致同前。", ""),
    ("余同前。", ""),
    ("与前片比较未见明显变化。", ""),
    ("心影大小同前。", ""),
    ("右肺门影较前清晰。", ""),
    ("心影较前缩小。", ""),
    ("建议治疗后复查。", ""),
    ("建议定期随访。", ""),
    ("未见新发病灶。", ""),
    ("右肺未见明确新发病灶，余同前。", ""),
    ("与前片比较，心肺膈未见明显改变。", ""),
    # a comparison clause goes, the finding stays
    ("与前片比较，右侧胸腔积液增多。", "右侧胸腔积液。"),
    ("右下肺结节较前增大。", "右下肺结节。"),
    ("新出现左侧气胸。", "左侧气胸。"),
    ("新发左侧气胸。", "左侧气胸。"),
    ("右肺炎症较前吸收好转。", "右肺炎症。"),
    ("心影增大，同前。", "心影增大。"),
    ("心影增大同前。", "心影增大。"),
    ("双肺纹理增多，与前片比较未见明显变化。", "双肺纹理增多。"),
    ("右侧胸腔积液，较前增多。", "右侧胸腔积液。"),
    ("左侧气胸较前减少，肺组织压缩约20%。", "左侧气胸，肺组织压缩约20%。"),
    ("左肺下叶肺不张较前好转。", "左肺下叶肺不张。"),
    ("右侧锁骨骨折术后，内固定在位，同前。", "右侧锁骨骨折术后，内固定在位。"),
    ("左侧肋膈角变钝，较前好转。", "左侧肋膈角变钝。"),
    ("两肺门影增大，同前。", "两肺门影增大。"),
    ("右上肺陈旧性结核灶，大致同前。", "右上肺陈旧性结核灶。"),
    ("主动脉结增宽、迂曲，同前片。", "主动脉结增宽、迂曲。"),
    ("双肺野透亮度增高，膈肌低平，考虑肺气肿，较前相仿。", "双肺野透亮度增高，膈肌低平，考虑肺气肿。"),
    ("右侧胸腔积液较2019-03-01片增多。", "右侧胸腔积液。"),
    ("右下肺结节，较前片增大。", "右下肺结节。"),
    ("比较前片，右下肺斑片影范围缩小。", "右下肺斑片影。"),
    ("前片所示右上肺结节较前缩小。", "右上肺结节。"),
    ("左下肺片状影，前片未见。", "左下肺片状影。"),
    ("左下肺肺炎，较前新见。", "左下肺肺炎。"),
    ("左侧气胸（新发），左肺压缩约30%。", "左侧气胸，左肺压缩约30%。"),
    ("右下肺结节（较前增大），边缘毛糙。", "右下肺结节，边缘毛糙。"),
    ("左肺上叶见斑片状实变影，较老片进展。", "左肺上叶见斑片状实变影。"),
    ("与2019年3月1日胸片对比，双肺渗出性病变较前加重。", "双肺渗出性病变。"),
    ("与前次检查相比，右下肺感染仍存在。", "右下肺感染存在。"),
    ("右侧第5肋骨折，与前片相仿，骨痂形成。", "右侧第5肋骨折，骨痂形成。"),
    ("右上肺片状影较前密实，范围增大。", "右上肺片状影。"),
    ("右侧胸腔积液较前片明显减少，右下肺膨胀不全较前好转。", "右侧胸腔积液，右下肺膨胀不全。"),
    ("双肺渗出影较前明显吸收减少。", "双肺渗出影。"),
    ("右肺癌术后复查：右侧胸腔积液较前增多，右肺体积缩小。", "右肺癌术后：右侧胸腔积液，右肺体积缩小。"),
    ("右下肺较前片状影增多。", "右下肺片状影。"),
    ("抗炎治疗后复查，右下肺炎症较前吸收。", "右下肺炎症。"),
    # a change word that is part of the finding's name stays
    ("心影较前明显增大。", "心影增大。"),
    ("双肺纹理较前增多、增粗。", "双肺纹理增多、增粗。"),
    ("与前片比较，双肺纹理增多，右侧胸膜增厚，气管旁淋巴结增大。", "双肺纹理增多，右侧胸膜增厚，气管旁淋巴结增大。"),
    # partial resolution keeps the finding; a finding reported gone goes
    ("右下肺炎症部分吸收。", "右下肺炎症。"),
    ("右下肺实变影大部分吸收，残留少许条索影。", "右下肺实变影，残留少许条索影。"),
    ("右侧胸腔积液已吸收。", ""),
    ("右侧少量胸腔积液基本吸收。", ""),
    ("原右下肺炎症已消失。", ""),
    ("气管插管已拔除。", ""),
    ("右侧气胸已吸收，右侧胸腔少量积液较前减少。", "右侧胸腔少量积液。"),
    ("右侧胸腔引流管已拔除，右侧少量气胸。", "右侧少量气胸。"),
    ("右侧胸腔积液较前减少，右侧肋膈角消失。", "右侧胸腔积液，右侧肋膈角消失。"),  # an obliterated angle
    # sentences, list numbers and end marks
    ("1、右下肺炎症，较前吸收好转。2、右侧胸腔积液已吸收。3、心影增大，同前。", "1、右下肺炎症。2、心影增大。"),
    ("与前片比较：\n1.右侧胸腔积液较前增多；\n2.心影增大同前；\n3.与前片比较无明显变化\n", "1.右侧胸腔积液。\n2.心影增大。\n"),
    ("肺气肿，同前；主动脉硬化。", "肺气肿。主动脉硬化。"),
    ("右下肺感染，较前进展；左侧少量胸腔积液，为新出现", "右下肺感染。左侧少量胸腔积液。"),
    ("胸部正侧位：与2023-05-12片比较，右下肺斑片状模糊影较前明显吸收，残留少许条索影；右侧少量胸腔积液已吸收。"
     "双肺纹理增多。心影不大，主动脉迂曲。双侧肋膈角锐利。",
     "胸部正侧位：右下肺斑片状模糊影，残留少许条索影。双肺纹理增多。心影不大，主动脉迂曲。双侧肋膈角锐利。"),
]

# Written with no comparison: returned as written, to the byte (normal statements, findings whose
# name holds a change word, words that only look like a comparison).
AS_WRITTEN = [
    "心肺膈未见异常。",
    "双肺纹理增多。",
    "主动脉迂曲。",
    "双肺未见明显异常。",
    "心肺膈未见明显改变。",
    "两肺纹理清晰，未见实质性病变；心影大小、形态正常；双侧膈面光整，肋膈角锐利。",
    "右下肺结节增大。",  # no comparison anywhere in the report: a change word is left alone
    "右侧肋膈角消失，提示胸腔积液。",
    "新型冠状病毒肺炎，双肺多发磨玻璃影。",
    "右肺门区新生物可能。",
    "左侧第6肋新鲜骨折。",
    "胸部正侧位：双肺纹理增粗；心影不大\n主动脉结钙化",
    "Heart size is stable. New small left pleural effusion; no change from prior.",
    "",
]

FINDING_WORDS = ("积液", "气胸", "结节", "实变", "心影增大", "纹理增多", "纹理增粗", "肺炎", "炎症", "肺不张", "骨折",
                 "术后", "斑片", "条索", "渗出", "肺气肿", "迂曲", "胸膜增厚", "淋巴结增大", "肺门影增大", "感染",
                 "结核", "磨玻璃", "膨胀不全", "体积缩小", "内固定", "肋膈角变钝", "透亮度增高", "钙化", "肿块")
# Comparison wording that must be gone (besides what `mentions_comparison` finds)
MARKERS = ("较前", "同前", "前片", "前次", "老片", "复查", "新出现", "新发", "新见", "与前", "对比", "比较", "相比", "相仿",
           "无明显变化", "未见明显变化", "变化不大", "已吸收", "已消失", "好转", "进展", "加重", "吸收", "随访", "拔除")
# Comparisons over findings that are still there (no finding reported gone): every finding word stays
REPORTS = [
    "与前片（2021-07-03）比较：右下肺斑片状实变影较前增多，右侧少量胸腔积液较前增多；左肺纹理增多、增粗。",
    "两肺纹理增多、紊乱，右下肺见小结节影，大小约0.8cm，与前次检查相比无著变；心影增大，主动脉迂曲、钙化，同前。",
    "右肺癌术后改变，右侧胸膜增厚，同前；纵隔内淋巴结增大，较前明显；新见左上肺肿块影。",
    "右侧第4、5肋骨折，骨折线较前模糊；右侧少量气胸较前减少；右下肺膨胀不全较前好转。",
    "对比老片：双肺渗出性病变较前吸收，仍见少许磨玻璃影；左下肺感染较前进展；心影增大较前明显。",
    "左上肺陈旧性结核，纤维条索影及钙化灶同前；右侧肋膈角变钝，大致同前；双肺野透亮度增高，考虑肺气肿，较前相仿。",
    "复查：左侧气胸较前吸收，肺组织压缩约10%；左侧胸腔少量积液，为新出现；心影不大，同前。",
    "与老片比较，右肺门影增大，较前片变化不大；右下肺炎症较前部分吸收；肺不张同前。",
    "经治疗后复查，双肺炎症较前减轻；心影增大；左侧锁骨骨折术后，内固定在位，较前无明显变化。",
]


def finding_words(text: str) -> set[str]:
    return {word for word in FINDING_WORDS if word in text}


def tidy_problems(text: str) -> list[str]:
    """What a changed section must not have: empty sentences, doubled or leading punctuation."""
    problems = []
    if re.search(r"[，,：:；;。！？!?、]{2,}", text.replace("\n", "")):
        problems.append("doubled punctuation")
    if re.search(r"(?:^|[。！？\n])[，,：:；;、。]", text):
        problems.append("empty sentence or leading punctuation")
    if text and text.rstrip("\n")[-1] not in "。！？":
        problems.append("no end mark")
    return problems


@pytest.mark.parametrize("source, want", REWRITES)
def test_comparisons_are_removed_and_findings_kept(source, want):
    got = remove_zh_comparisons(source)
    assert got == want
    assert not mentions_comparison(got) and not tidy_problems(got)


@pytest.mark.parametrize("text", AS_WRITTEN)
def test_a_section_without_comparison_is_returned_as_written(text):
    assert remove_zh_comparisons(text) == text
    assert not mentions_comparison(text) or text.startswith("Heart")


@pytest.mark.parametrize("report", REPORTS)
def test_no_finding_word_is_lost_and_no_comparison_is_left(report):
    got = remove_zh_comparisons(report)
    assert mentions_comparison(report) and got != report
    assert finding_words(report) <= finding_words(got), finding_words(report) - finding_words(got)
    assert not mentions_comparison(got)
    assert not [marker for marker in MARKERS if marker in got]
    assert not tidy_problems(got)


def test_every_rewrite_keeps_its_findings_unless_reported_gone():
    for source, want in REWRITES:
        got = remove_zh_comparisons(source)
        lost = finding_words(source) - finding_words(got)
        gone = [s for s in re.split("[。；;\n，]", source) if re.search("已吸收|已消失|基本吸收|已拔除", s)]
        assert all(any(word in s for s in gone) for word in lost), (source, lost)
        assert not [marker for marker in MARKERS if marker in got], (source, got)


def test_normal_statements_stay_in_a_report_that_compares():
    report = "与前片比较：心肺膈未见明显异常；双肺纹理清晰，未见实变及结节；双侧肋膈角锐利；未见气胸。"
    assert remove_zh_comparisons(report) == "心肺膈未见明显异常。双肺纹理清晰，未见实变及结节。双侧肋膈角锐利。未见气胸。"


def test_states_nothing():
    for text in ("心影大小", "余", "双肺", "病变", "病灶", "心影大小、形态", "约0.5cm", "余肺", "无明显改变", "所见"):
        assert states_nothing(text), text
    for text in ("右肺病变", "双肺未见明显异常", "右侧胸腔积液", "心影增大", "术后", "未见气胸", "主动脉迂曲"):
        assert not states_nothing(text), text


def test_the_report_compares_when_either_section_does():
    """A change word ending a clause is a change when the report compares anywhere, so the impression
    loses it when only the findings name the prior; a report that never compares keeps it."""
    findings, impression = "与前片比较，右下肺结节。", "右下肺结节增大。双肺纹理增多。"
    assert zh_sections_without_comparisons(findings, impression) == ("右下肺结节。", "右下肺结节。双肺纹理增多。")
    assert remove_zh_comparisons(impression) == impression
    assert remove_zh_comparisons(impression, compared=True) == "右下肺结节。双肺纹理增多。"
    assert zh_sections_without_comparisons("", "较前相仿。") == ("", "")


# ---------------------------------------------------------------------------------------------- study targets

ZH_FINDINGS = "与前片比较：右下肺斑片状实变影较前吸收好转；右侧少量胸腔积液已吸收；心影增大，同前。"
ZH_IMPRESSION = "1、右下肺肺炎，较前好转。2、心影增大。"


def zh_record(study_id="z1", prior=None, findings=ZH_FINDINGS, impression=ZH_IMPRESSION) -> StudyRecord:
    return StudyRecord(study_id, "pz", [], findings=findings, impression=impression, summary="右下肺肺炎。",
                       prior_study_id=prior)


def test_removes_comparisons_for_english_and_chinese():
    assert all(removes_comparisons(code) for code in ("en", "zh", "zh-hans", "zh-hant", "en-us"))
    assert not any(removes_comparisons(code) for code in ("fr", "ja", "ko"))


def test_a_chinese_study_target_without_comparisons():
    record = zh_record()
    want_findings = "右下肺斑片状实变影。心影增大。"
    want_impression = "1、右下肺肺炎。2、心影增大。"
    for language in ("zh", "zh-hans"):
        assert study_target(record, "findings", False, language) == want_findings
        assert study_target(record, "impression", False, language) == want_impression
        assert study_target(record, "sections", False, language) == sections_text(want_findings, want_impression,
                                                                                  language)
        assert study_target(record, "summary", False, language) == "右下肺肺炎。"
        # with comparisons kept: the sections as written
        assert study_target(record, "findings", True, language) == ZH_FINDINGS
        assert study_target(record, "sections", True, language) == sections_text(ZH_FINDINGS, ZH_IMPRESSION, language)
    # nothing left once comparisons are out: an empty target (the dataset skips the study)
    assert study_target(zh_record(findings="与前片比较无明显变化。"), "findings", False, "zh") == ""
    # a language without rules keeps its sections as written
    assert study_target(record, "findings", False, "fr") == ZH_FINDINGS


def test_english_targets_are_unchanged():
    """English goes through the preparation's rule summary section by section, as before."""
    findings = "Heart size is normal. New small left pleural effusion. No pneumothorax."
    impression = "Small left pleural effusion, new since the prior study."
    record = StudyRecord("e1", "pe", [], findings=findings, impression=impression, summary="s")
    want_findings, want_impression = rule_summary(findings, ""), rule_summary("", impression)
    assert want_findings == "Heart size is normal. Small left pleural effusion. No pneumothorax."
    assert study_target(record, "findings", False) == want_findings
    assert study_target(record, "impression", False, "en") == want_impression
    assert study_target(record, "sections", False) == sections_text(want_findings, want_impression)
    assert study_target(record, "findings", True) == findings


def _dataset(records, language, **kwargs) -> StudyDataset:
    studies = StudyFile(path="studies.jsonl", records=records, dropped={}, problems={})
    options = {"target": "findings", "max_images": 2, "use_prior": True, "prior_report": False,
               "keep_comparisons": True, "max_samples": 0, **kwargs}
    return StudyDataset("zh_studies", studies, lambda image, rng: image, str, ["请描述。"], 10 ** 8,
                        language=language, **options)


def test_a_chinese_study_dataset_removes_comparisons_only_where_no_prior_is_shown(caplog):
    with caplog.at_level(logging.WARNING, logger="xraygpt.data.study_dataset"):
        ds = _dataset([zh_record("z0"), zh_record("z1", prior="z0")], "zh")
    assert "no comparison rules" not in caplog.text
    targets = {study_id: target for study_id, _, target in ds.samples}
    assert targets == {"z0": "右下肺斑片状实变影。心影增大。", "z1": ZH_FINDINGS}  # z1 is shown with its prior
    no_keep = _dataset([zh_record("z0"), zh_record("z1", prior="z0")], "zh", keep_comparisons=False)
    assert {t for _, _, t in no_keep.samples} == {"右下肺斑片状实变影。心影增大。"}


def test_a_language_without_rules_is_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="xraygpt.data.study_dataset"):
        ds = _dataset([zh_record("z0")], "fr")
    assert "zh_studies: no comparison rules for language fr; the findings targets" in caplog.text
    assert ds.samples[0][2] == ZH_FINDINGS
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xraygpt.data.study_dataset"):
        _dataset([zh_record("z0")], "fr", target="summary")
    assert "no comparison rules" not in caplog.text
