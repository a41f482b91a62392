"""Languages (#19 item 1): Chinese prompts, metrics that count Chinese, a Chinese stage 2 end to end,
the demo's and the server's language, and the refusals.

What the end-to-end test proves, and what it does not: the tiny LLaMA of the fixtures has a
SentencePiece tokenizer trained on English text with byte fallback, so a Chinese character
becomes its three UTF-8 byte pieces (no unknown token, and decoding gives the text back); a
stage 1 on the synthetic images, then a stage 2 on the shared Chinese summaries with the six
shared images, train with finite losses on Chinese targets after Chinese instructions, and
evaluate.py scores the answers with the character tokenizer and skips clinical efficacy.  The tiny
LLM is frozen and random, so its answers are not Chinese prose: answer quality is not tested here.
"""

import json
import logging
import socket
import sys
import types

import numpy as np
import pytest
import torch

import evaluate
import train
from conftest import REPO, SHARED_OPENI, tiny_config, write_yaml
from xraygpt.data.datasets import MixedDataset, build_openi, build_openi_zh
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval
from xraygpt.evaluation.caption_metrics import bleu_statistics, cider_d_scores, corpus_bleu
from xraygpt.evaluation.chexpert_rules import ChexpertRuleLabeler
from xraygpt.evaluation.report_metrics import compute_metrics, format_comparison, format_metrics
from xraygpt.evaluation.rouge import make_scorer, rouge_f1
from xraygpt.evaluation.text import (MissingTokenizerError, check_cjk_tokenizer, metric_tokens, r2gen_tokens,
                                     unicode_tokens)
from xraygpt.languages import LanguageError, detect_language, written_in
from xraygpt.prompting import IMAGE_TAG, PromptFileError, instruction_file, load_language_instructions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = REPO / "prompts" / "alignment.txt"
ZH_SUMMARY = "请描述这张胸部X光片的所见和印象。"
# Two real Chinese summaries of the shared file (162_1 and 1390_1's openings)
ZH_A = "根据X射线图像，心脏大小正常，肺部看起来很清晰。已经排除了肺炎、积液、水肿、气胸。"
ZH_B = "根据检查结果，心脏大小和肺部血管正常，未见局灶性实变、气胸或胸腔积液。"
needs_shared = pytest.mark.skipif(not (SHARED_OPENI / "filter_cap_zh.json").is_file(),
                                  reason=f"the shared data ({SHARED_OPENI}) is not on this machine")


# ------------------------------------------------------------------------------------- metrics
def test_rouge_l_of_chinese_is_1_for_equal_texts_and_less_for_different_ones():
    # the bug this fixes: rouge-score's default tokenizer keeps a-z0-9 only, so equal Chinese texts score 0,
    # and two different ones that share a Latin letter score 1
    assert make_scorer("en").score(ZH_B, ZH_B)["rougeL"].fmeasure == 0.0
    assert make_scorer("en").score("X射线正常", "X射线异常")["rougeL"].fmeasure == 1.0
    assert rouge_f1(["X射线异常"], ["X射线正常"], ["zh"])[0, 2] == pytest.approx(0.8)
    same, different = rouge_f1([ZH_A, ZH_B], [ZH_A, ZH_A], ["zh", "zh"])
    assert same[2] == pytest.approx(1.0) and same.tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert 0.0 < different[2] < 1.0
    # one character changed: still close to 1, but below
    near = rouge_f1([ZH_A.replace("正常", "增大")], [ZH_A], ["zh"])[0]
    assert 0.9 < near[2] < 1.0
    # English rows keep rouge-score's own tokenizer and stemmer (the papers' figures)
    assert rouge_f1(["pleural effusions"], ["pleural effusion"], ["en"]).tolist() == [[1.0, 1.0, 1.0]]


def test_mixed_script_text_is_tokenized_character_by_character_and_word_by_word():
    text = "胸片（X-ray）显示2.5cm结节, Heart SIZE normal；心脏大小正常。"
    assert unicode_tokens(text) == ["胸", "片", "x", "ray", "显", "示", "2", "5cm", "结", "节", "heart", "size",
                                    "normal", "心", "脏", "大", "小", "正", "常"]
    assert metric_tokens(text, "zh") == unicode_tokens(text)
    # English text: R2Gen's normalisation as before; a CJK character inside it is its own token
    assert metric_tokens("Heart size normal. No effusion.", "en") == r2gen_tokens("Heart size normal. No effusion.")
    assert metric_tokens("Heart normal 心脏.", "en") == ["heart", "normal", "心", "脏", "."]
    # full-width Latin letters and digits are NFKC-folded; zero-width and replacement characters dropped
    assert unicode_tokens("ＣＴ２\u200b张\ufffd") == ["ct2", "张"]
    assert unicode_tokens("") == [] and unicode_tokens("。，！") == []


def test_bleu_and_cider_of_identical_chinese_reports_are_their_maxima():
    refs = [ZH_A, ZH_B, "心影不大，双肺纹理清晰，未见明确实质性病变。"]
    tokens = [metric_tokens(r, "zh") for r in refs]
    assert corpus_bleu(bleu_statistics(tokens, tokens)) == pytest.approx(np.ones(4))
    assert cider_d_scores(tokens, tokens) == pytest.approx(np.full(3, 10.0))
    # what R2Gen's normalisation made of them: one "word" per sentence, so BLEU-4 was ~0
    old = [r2gen_tokens(r) for r in refs]
    assert corpus_bleu(bleu_statistics(old, old))[3] < 1e-3
    rows = [{"image_id": str(k), "prediction": r, "reference": r, "language": "zh"} for k, r in enumerate(refs)]
    m = compute_metrics(rows, ChexpertRuleLabeler(), resamples=10)
    assert m["headline"]["ROUGE-L"] == pytest.approx(1.0) and m["headline"]["BLEU-4"] == pytest.approx(1.0)
    assert m["headline"]["CIDEr-D"] == pytest.approx(10.0)
    rows[0]["prediction"] = ZH_B
    assert compute_metrics(rows, ChexpertRuleLabeler(), resamples=0)["headline"]["CIDEr-D"] < 10.0


def test_clinical_efficacy_is_english_only_and_metrics_json_says_so():
    zh = [{"image_id": f"z{k}", "prediction": ZH_A, "reference": ZH_B, "language": "zh"} for k in range(3)]
    m = compute_metrics(zh, ChexpertRuleLabeler(), resamples=10)
    assert m["clinical_efficacy"] == {"skipped": "no phrase lists for language zh"}
    assert not any(k.startswith("CE") for k in m["headline"]) and not any(k.startswith("CE") for k in m["confidence_intervals"] if k != "level")
    assert m["languages"] == {"zh": 3} and "CJK character a token" in m["tokenization"]["zh"]
    table = format_metrics(m)
    assert "Clinical efficacy: skipped (no phrase lists for language zh)" in table
    en = [{"image_id": f"e{k}", "prediction": "Small left pleural effusion.", "reference": "Left pleural effusion."}
          for k in range(2)]
    mixed = compute_metrics(zh + en, ChexpertRuleLabeler(), resamples=10)
    ce = mixed["clinical_efficacy"]
    assert ce["rows"] == 2 and ce["left_out"] == "3 rows: no phrase lists for language zh"
    assert ce["positive_only"]["all_14"]["micro"]["f1"] == pytest.approx(1.0)  # the English rows agree
    assert ce["positive_counts"]["reference"]["Pleural Effusion"] == 2  # Chinese rows labelled nothing
    assert set(mixed["by_language"]) == {"en", "zh"} and "CE micro F1 (14)" not in mixed["by_language"]["zh"]
    assert mixed["by_language"]["en"]["CE micro F1 (14)"] == pytest.approx(1.0)
    ce_line = next(line for line in format_comparison({"zh": m, "mixed": mixed}).splitlines()
                   if line.startswith("CE micro F1 (14)"))
    assert ce_line.split()[-2:] == ["-", "1.0000"]  # no CE for the Chinese run


def test_predictions_in_another_script_are_counted_and_still_scored():
    rows = [{"image_id": "a", "prediction": "The heart is normal.", "reference": ZH_A, "language": "zh"},
            {"image_id": "b", "prediction": ZH_A, "reference": ZH_A, "language": "zh"},
            {"image_id": "c", "prediction": "心脏 normal", "reference": "Heart normal.", "language": "en"},
            {"image_id": "d", "prediction": "x", "reference": "y", "language": 3}]
    m = compute_metrics(rows, ChexpertRuleLabeler(), resamples=0)
    assert m["other_script_predictions"] == {"count": 2, "ids": ["a", "c"]}
    assert m["num_scored"] == 3 and m["skipped"]["by_reason"] == {"malformed row": ["d"]}
    assert detect_language("X射线") == "zh" and detect_language("X-ray") == "en"
    assert written_in("X射线正常", "zh") and not written_in("X-ray", "zh") and written_in("", "zh")


def test_jieba_words_when_asked_and_a_clear_refusal_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)  # as if not installed
    with pytest.raises(MissingTokenizerError, match="pip install jieba"):
        check_cjk_tokenizer("jieba")
    with pytest.raises(ValueError, match="characters, jieba"):
        check_cjk_tokenizer("words")
    fake = types.SimpleNamespace(setLogLevel=lambda level: None,
                                 lcut=lambda text: ["心脏", "大小", "正常", "，", "x", "射线", " ", "ok"])
    monkeypatch.setitem(sys.modules, "jieba", fake)
    check_cjk_tokenizer("jieba")
    assert metric_tokens("心脏大小正常，X射线 ok", "zh", "jieba") == ["心脏", "大小", "正常", "x", "射线", "ok"]
    rows = [{"image_id": "a", "prediction": "心脏大小正常", "reference": "心脏大小正常", "language": "zh"}]
    assert "jieba words" in compute_metrics(rows, ChexpertRuleLabeler(), resamples=0, cjk_tokenizer="jieba")["tokenization"]["zh"]


# ------------------------------------------------------------------------------ prompts, datasets
def test_chinese_prompts_sit_beside_the_english_ones_and_a_language_without_them_is_refused():
    assert instruction_file(PROMPTS, "zh") == REPO / "prompts" / "zh" / "alignment.txt"
    assert instruction_file(PROMPTS) == PROMPTS and instruction_file(REPO / "prompts" / "zh" / "alignment.txt", "zh") \
        == REPO / "prompts" / "zh" / "alignment.txt"
    zh = load_language_instructions(PROMPTS, "zh")
    assert len(zh) >= 10 and all(i.startswith(IMAGE_TAG) and all(map(written_in, [i], ["zh"])) for i in zh)
    assert zh[0] == f"{IMAGE_TAG} {ZH_SUMMARY}"
    with pytest.raises(PromptFileError) as err:
        load_language_instructions(PROMPTS, "fr")
    assert "\n" not in str(err.value) and "no prompts for language 'fr'" in str(err.value)
    assert str(REPO / "prompts" / "fr" / "alignment.txt") in str(err.value)
    with pytest.raises(LanguageError, match="language code"):
        instruction_file(PROMPTS, "../en")


def test_a_dataset_in_a_language_without_prompts_is_refused_in_one_line(tiny_assets):
    with pytest.raises(PromptFileError) as err:
        build_openi(str(tiny_assets["val"]), MedCLIPImageEval(112), CaptionProcessor(), prompt_path=str(PROMPTS),
                    language="fr")
    assert str(err.value).startswith("datasets.openi: no prompts for language 'fr'") and "\n" not in str(err.value)


@needs_shared
def test_captions_in_another_script_than_the_language_are_counted_not_dropped(caplog):
    with caplog.at_level(logging.WARNING, logger="xraygpt.data.datasets"):
        ds = build_openi(str(SHARED_OPENI), MedCLIPImageEval(112), CaptionProcessor(), ann_file="filter_cap_zh.json",
                         prompt_path=str(PROMPTS))  # language en (default) over the Chinese file
    assert len(ds) == 6 and ds.language == "en"
    assert "6 of 6 captions are not written in the script of language 'en'" in caplog.text


@needs_shared
def test_a_mixed_english_and_chinese_dataset_draws_each_language_with_its_own_instructions():
    """The mixed stage 2 of train_configs/stage2_en_zh.yaml, on the shared images: two builders, one mix."""
    en = build_openi(str(SHARED_OPENI), MedCLIPImageEval(112), CaptionProcessor(), prompt_path=str(PROMPTS))
    zh = build_openi_zh(str(SHARED_OPENI), MedCLIPImageEval(112), CaptionProcessor(), ann_file="filter_cap_zh.json",
                        prompt_path=str(PROMPTS))
    assert zh.language == "zh" and len(en) == len(zh) == 6
    mixed = MixedDataset([en, zh], seed=0)
    samples = [mixed[k] for k in range(len(mixed))]
    for sample in samples[:6]:
        assert written_in(sample["caption"], "en") and written_in(sample["instruction"], "en")
    for sample in samples[6:]:
        assert not written_in(sample["caption"], "en") and sample["instruction"] in zh.instructions
    assert [s["image_id"] for s in samples[:6]] == [s["image_id"] for s in samples[6:]]


def test_the_tiny_tokenizer_encodes_chinese_as_bytes_and_gives_it_back(tiny_model_factory):
    tok = tiny_model_factory().tokenizer
    ids = tok(ZH_A, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert len(ids) >= 3 * sum(not c.isascii() for c in ZH_A)  # byte fallback: 3 bytes per character
    assert tok.decode(ids) == ZH_A


# ------------------------------------------------------------------------------- stage 2 end to end
@needs_shared
def test_a_chinese_stage2_on_the_shared_summaries_trains_evaluates_and_answers(tiny_assets, tmp_path, capsys):
    stage1 = tiny_config(tiny_assets, tmp_path / "stage1", iters_per_epoch=2, batch_size_train=2,
                         sample_generations=0)
    assert train.main(["--cfg-path", str(write_yaml(stage1, tmp_path / "stage1.yaml"))]) == 0
    ckpt = tmp_path / "stage1" / "checkpoints" / "checkpoint_last.pt"
    cfg = tiny_config(tiny_assets, tmp_path / "stage2", iters_per_epoch=3, batch_size_train=2, sample_generations=2,
                      max_new_tokens=6)
    cfg["model"]["ckpt"] = str(ckpt)
    cfg["model"]["prompt"]["max_txt_len"] = 160
    processor = {"name": "medclip_image_eval", "image_size": 112}
    cfg["datasets"] = {"openi_zh": {"root": str(SHARED_OPENI), "ann_file": "filter_cap_zh.json",
                                    "eval_root": str(SHARED_OPENI), "prompt_path": str(PROMPTS),
                                    "vis_processor": {"train": processor, "eval": processor}}}
    assert train.main(["--cfg-path", str(write_yaml(cfg, tmp_path / "stage2.yaml"))]) == 0
    out = tmp_path / "stage2"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    stage2_ckpt = out / "checkpoints" / "checkpoint_last.pt"
    trained = torch.load(stage2_ckpt, weights_only=True)["model"]
    assert any(not torch.equal(v, torch.load(ckpt, weights_only=True)["model"][k]) for k, v in trained.items())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(not written_in(s["reference"], "en") for s in samples)

    # evaluate.py on the same six images in Chinese
    model = dict(cfg["model"], ckpt=str(stage2_ckpt))
    dataset = {"root": str(SHARED_OPENI), "ann_file": "filter_cap_zh.json", "language": "zh",
               "prompt_path": str(PROMPTS), "vis_processor": {"eval": processor}}
    evaluation = {"output_dir": str(tmp_path / "eval"), "batch_size": 3, "max_new_tokens": 8,
                  "bootstrap_resamples": 10, "progress": False, "device": "cpu"}
    eval_yaml = write_yaml({"model": model, "datasets": {"openi": dataset}, "evaluation": evaluation},
                           tmp_path / "eval.yaml")
    assert evaluate.main(["--cfg-path", str(eval_yaml)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_scored"] == 6 and metrics["languages"] == {"zh": 6}
    assert metrics["clinical_efficacy"] == {"skipped": "no phrase lists for language zh"}
    assert "Clinical efficacy: skipped" in printed
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert {r["language"] for r in rows} == {"zh"}
    assert all(r["instruction"] in load_language_instructions(PROMPTS, "zh") for r in rows)

    # the demo over the trained model, asked in Chinese
    from xraygpt import builders
    from xraygpt.config import validate
    from omegaconf import OmegaConf
    from xraygpt.ui.app import Handlers
    from xraygpt.ui.settings import DemoSettings

    built = builders.build_model(validate(OmegaConf.create(dict(cfg, model=model))).model).eval()
    handlers = Handlers(built, DemoSettings(prompt_path=str(PROMPTS), language="zh", max_new_tokens=6))
    chat = list(handlers.upload(str(SHARED_OPENI / "image" / "2_1.png"), 0.0, 1, 6, None))[-1][0]
    assert chat[0] == {"role": "user", "content": ZH_SUMMARY} and chat[1]["role"] == "assistant"


@needs_shared
def test_the_mixed_english_and_chinese_config_trains_on_the_shared_data(tiny_assets, tmp_path):
    """train_configs/stage2_en_zh.yaml's datasets section, pointed at the shared sample, through train.py."""
    import yaml

    shipped = yaml.safe_load((REPO / "train_configs" / "stage2_en_zh.yaml").read_text())["datasets"]
    assert set(shipped) == {"openi", "openi_zh"} and shipped["openi_zh"]["language"] == "zh"
    processor = {"name": "medclip_image_eval", "image_size": 112}
    datasets = {}
    for name, section in shipped.items():
        section = dict(section, root=str(SHARED_OPENI), eval_root=str(SHARED_OPENI), prompt_path=str(PROMPTS),
                       vis_processor={"train": processor, "eval": processor})
        if "ann_file" in section:
            section["ann_file"] = "filter_cap_zh.json"  # beside the shared sample's images, not in ../
        datasets[name] = section
    cfg = dict(tiny_config(tiny_assets, tmp_path / "mixed", iters_per_epoch=2, batch_size_train=4,
                           sample_generations=0), datasets=datasets)
    cfg["model"]["prompt"]["max_txt_len"] = 160
    assert train.main(["--cfg-path", str(write_yaml(cfg, tmp_path / "mixed.yaml"))]) == 0
    records = [json.loads(line) for line in (tmp_path / "mixed" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))


# ------------------------------------------------------------------------------------------- demo
@pytest.fixture(scope="module")
def tiny_model(tiny_model_factory):
    return tiny_model_factory(seed=0).eval()


@pytest.fixture(scope="module")
def xray(tiny_assets):
    return sorted((tiny_assets["val"] / "image").iterdir())[0]


def test_the_demo_language_control_selects_the_chinese_summary_instruction(tiny_model, xray):
    from xraygpt.ui.app import Handlers
    from xraygpt.ui.settings import DemoSettings

    handlers = Handlers(tiny_model, DemoSettings(prompt_path=str(PROMPTS), max_new_tokens=4))
    assert handlers.summary_instructions == {"en": DemoSettings().summary_instruction, "zh": ZH_SUMMARY}
    chat, _, _, user = list(handlers.upload(str(xray), 0.0, 1, 4, None))[-1]
    assert chat[0]["content"] == DemoSettings().summary_instruction  # English by default
    user = handlers.set_language("zh", user)
    chat = list(handlers.summarize(0.0, 1, 4, user))[-1][0]
    assert chat[-2] == {"role": "user", "content": ZH_SUMMARY}
    assert handlers.set_language("fr", user).language == "zh"  # not offered: kept
    from PIL import Image

    user.session.set_study([Image.open(xray)], ["PA"], "", language="en")  # a study loaded in English ...
    assert handlers.set_language("zh", user).session.study[3] == "zh"  # ... is tagged in the language chosen
    user = handlers.reset(user)[-1]
    assert user.language == "zh"  # Reset keeps the chosen language
    # a fresh user starts in demo.language
    zh_first = Handlers(tiny_model, DemoSettings(prompt_path=str(PROMPTS), language="zh", max_new_tokens=4))
    assert list(zh_first.upload(str(xray), 0.0, 1, 4, None))[-1][0][0]["content"] == ZH_SUMMARY


def test_the_demo_ui_has_the_language_control_and_its_api(tiny_model, xray):
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    from xraygpt.ui.app import build_app, launch
    from xraygpt.ui.settings import DemoSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = DemoSettings(port=port, prompt_path=str(PROMPTS), max_new_tokens=4, examples=())
    app = build_app(tiny_model, settings)
    radios = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "language"]
    assert len(radios) == 1 and [value for _, value in radios[0].choices] == ["en", "zh"]
    launch(app, settings, block=False)
    try:
        client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
        client.predict("zh", api_name="/set_language")
        job = client.submit(handle_file(str(xray)), 0.0, 1, 4, api_name="/upload")
        job.result()
        chat = [out[0] for out in job.outputs() if isinstance(out[0], list)][-1]
        first = chat[0]["content"]  # Gradio 6: a list of typed parts
        text = "".join(part.get("text", "") for part in first) if isinstance(first, list) else first
        assert text == ZH_SUMMARY
    finally:
        app.close()


def test_the_demo_refuses_a_language_without_prompts_before_loading_the_model():
    from xraygpt.ui.settings import DemoSettings

    with pytest.raises(PromptFileError, match="no prompts for language 'fr'"):
        DemoSettings(prompt_path=str(PROMPTS), languages=("en", "fr")).summary_instructions()
    with pytest.raises(ValueError, match="demo.language 'zh' is not one of demo.languages"):
        DemoSettings(language="zh", languages=("en",))
    with pytest.raises(LanguageError, match="demo.languages"):
        DemoSettings(languages=("en", "zh/../x"))


# ----------------------------------------------------------------------------------------- server
def _body(url: str, text: str | None = None, **extra) -> bytes:
    parts = [{"type": "image_url", "image_url": {"url": url}}] + ([{"type": "text", "text": text}] if text else [])
    return json.dumps({"model": "xraygpt", "messages": [{"role": "user", "content": parts}], **extra}).encode()


def test_the_server_summarises_an_image_only_message_in_the_language_asked(tiny_model, xray):
    from xraygpt.constants import IMAGE_TOKEN_ID
    from xraygpt.serving.app import ChatService
    from xraygpt.serving.protocol import APIError
    from xraygpt.serving.settings import ServeSettings

    service = ChatService(tiny_model, ServeSettings(prompt_path=str(PROMPTS), allow_local_files=True), batcher=None)

    def prompt_of(body: bytes) -> str:
        ids = service.prepare(body)[1].prompt_ids
        return tiny_model.tokenizer.decode([i for i in ids if i != IMAGE_TOKEN_ID], skip_special_tokens=True)

    assert ZH_SUMMARY in prompt_of(_body(str(xray), language="zh"))
    assert "Describe the findings and impression of this chest X-ray." in prompt_of(_body(str(xray), language="en"))
    assert "心脏大吗" in prompt_of(_body(str(xray), "心脏大吗？", language="zh"))  # a question is the user's own
    with pytest.raises(APIError, match="has no text") as err:  # no language: refused as before
        service.prepare(_body(str(xray)))
    assert "language" in err.value.message
    with pytest.raises(APIError) as err:
        service.prepare(_body(str(xray), language="fr"))
    assert err.value.status == 400 and err.value.param == "language" and "not served" in err.value.message
    no_prompts = ChatService(tiny_model, ServeSettings(prompt_path=str(PROMPTS), allow_local_files=True,
                                                       languages=("en", "fr")), batcher=None)
    with pytest.raises(APIError) as err:
        no_prompts.prepare(_body(str(xray), language="fr"))
    assert err.value.status == 400 and "no prompts for language 'fr'" in err.value.message
    assert str(REPO / "prompts" / "fr" / "alignment.txt") in err.value.message
    with pytest.raises(APIError) as err:
        service.prepare(_body(str(xray), language=7))
    assert err.value.status == 400 and err.value.param == "language"


def test_the_server_answers_a_chinese_request_over_http(tiny_model, xray):
    from fastapi.testclient import TestClient

    from xraygpt.serving.app import build_app
    from xraygpt.serving.settings import ServeSettings

    app = build_app(tiny_model, ServeSettings(prompt_path=str(PROMPTS), allow_local_files=True, max_new_tokens=4))
    with TestClient(app) as http:
        answer = http.post("/v1/chat/completions", content=_body(str(xray), language="zh"))
        refused = http.post("/v1/chat/completions", content=_body(str(xray), language="xx"))
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["role"] == "assistant"
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "language"


def test_a_study_is_tagged_in_the_language_of_the_request_or_of_its_question(tiny_model, xray):
    """The server writes a study's view tags and labels in the request's `language`, else in the language
    its question is written in; the chat in the session's language (study_prompts.study_instruction)."""
    from PIL import Image

    from xraygpt.chat import ChatSession
    from xraygpt.constants import IMAGE_TOKEN_ID
    from xraygpt.serving.app import ChatService
    from xraygpt.serving.settings import ServeSettings

    service = ChatService(tiny_model, ServeSettings(prompt_path=str(PROMPTS), allow_local_files=True), batcher=None)

    def study_prompt(text: str | None, **extra) -> str:
        parts = [{"type": "image_url", "image_url": {"url": str(xray)}}] * 2 + (
            [{"type": "text", "text": text}] if text else [])
        body = json.dumps({"model": "xraygpt", "messages": [{"role": "user", "content": parts}], **extra}).encode()
        ids = service.prepare(body)[1].prompt_ids
        text = tiny_model.tokenizer.decode([i for i in ids if i != IMAGE_TOKEN_ID], skip_special_tokens=True)
        return text.replace("<Img> </Img>", "<Img></Img>")  # the image's place decodes to a space

    chinese = study_prompt("心脏大吗？", indication="咳嗽")
    assert "正位：<Img></Img> 侧位：<Img></Img> 临床指征：咳嗽。 心脏大吗？" in chinese, chinese
    assert "正位：<Img></Img> 侧位：<Img></Img> 临床指征：cough。 Describe it." in study_prompt(
        "Describe it.", language="zh", indication="cough")
    english = study_prompt("Describe it.", indication="cough")
    assert "Frontal: <Img></Img> Lateral: <Img></Img> Indication: cough. Describe it." in english, english
    image = Image.open(xray)
    chat = ChatSession(tiny_model)
    chat.set_study([image, image], ["PA", "lateral"], "咳嗽", prior=image, language="zh")
    asked = tiny_model.tokenizer.decode([t for t in chat.prompt_ids("心脏大吗？", 12) if t >= 0],
                                        skip_special_tokens=True).replace("<Img> </Img>", "<Img></Img>")
    assert "正位（后前位）：<Img></Img> 侧位：<Img></Img> 既往正位：<Img></Img> 临床指征：咳嗽。 心脏大吗？" in asked, asked
    chat.set_study_language("en")  # the demo's language control
    asked = tiny_model.tokenizer.decode([t for t in chat.prompt_ids("Describe it.", 12) if t >= 0],
                                        skip_special_tokens=True).replace("<Img> </Img>", "<Img></Img>")
    assert "Frontal (PA): <Img></Img> Lateral: <Img></Img> Prior frontal: <Img></Img> Indication: 咳嗽. Describe it." in asked, asked
