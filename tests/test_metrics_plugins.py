"""Optional plug-ins: why each is skipped, and CheXbert run on a tiny locally built checkpoint."""

import math

import numpy as np
import pytest
import torch

from xraygpt.evaluation import plugins
from xraygpt.evaluation.chexpert_rules import OBSERVATIONS, ChexpertRuleLabeler
from xraygpt.evaluation.report_metrics import compute_metrics, format_metrics


def test_unset_missing_and_uninstalled_plugins_are_skipped_with_a_reason(tmp_path, monkeypatch):
    out = plugins.run_plugins(["a"], ["a"], {}, torch.device("cpu"))
    assert out == {name: f"skipped: evaluation.{name}_model is not set" for name in ("bertscore", "chexbert", "radgraph")}
    out = plugins.run_plugins(["a"], ["a"], {"chexbert": str(tmp_path / "nowhere")}, torch.device("cpu"))
    assert out["chexbert"] == f"skipped: {tmp_path / 'nowhere'} does not exist"
    monkeypatch.setitem(plugins.PLUGIN_PACKAGES, "bertscore", "no_such_package_for_xraygpt_tests")
    out = plugins.run_plugins(["a"], ["a"], {"bertscore": str(tmp_path)}, torch.device("cpu"))
    assert out["bertscore"] == "skipped: the no_such_package_for_xraygpt_tests package is not installed"


# CheXbert head classes: 0 blank, 1 positive, 2 negative, 3 uncertain (No Finding: 0 blank, 1 positive)
FORCED = {"Cardiomegaly": 1, "Edema": 3, "Pneumothorax": 2, "No Finding": 0}


@pytest.fixture(scope="module")
def tiny_chexbert(tmp_path_factory):
    """A 1-layer BERT CheXbert whose heads ignore the text and output FORCED (blank elsewhere)."""
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("chexbert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "effusion", "heart"]) + "\n")
    config = BertConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    config.save_pretrained(str(folder))
    model = plugins.CheXbert(config)
    with torch.no_grad():
        for head, obs in zip(model.linear_heads, plugins.CHEXBERT_HEADS):
            head.weight.zero_()
            head.bias.zero_()
            head.bias[FORCED.get(obs, 0)] = 5.0
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, folder / "chexbert.pth")
    return folder


def test_chexbert_labels_map_to_the_chexpert_convention(tiny_chexbert):
    labels = plugins.chexbert_labels(["no effusion", "heart", ""], tiny_chexbert, torch.device("cpu"))
    assert labels.shape == (3, 14)
    row = dict(zip(OBSERVATIONS, labels[0]))
    assert row["Cardiomegaly"] == 1.0 and row["Edema"] == -1.0 and row["Pneumothorax"] == 0.0
    assert math.isnan(row["No Finding"]) and math.isnan(row["Pleural Effusion"])
    assert np.array_equal(np.isnan(labels[0]), np.isnan(labels[2]))


def test_chexbert_plugin_scores_clinical_efficacy(tiny_chexbert):
    out = plugins.run_plugins(["x", "y"], ["z", "w"], {"chexbert": str(tiny_chexbert)}, torch.device("cpu"))
    ce = out["chexbert"]
    assert ce["positive_only"]["per_observation"]["Cardiomegaly"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert ce["positive_only"]["per_observation"]["Edema"]["support"] == 0
    assert ce["uncertain_as_positive"]["per_observation"]["Edema"]["support"] == 2
    assert out["bertscore"].startswith("skipped") and out["radgraph"].startswith("skipped")
    rows = [{"image_id": "a", "prediction": "x", "reference": "z"}]
    table = format_metrics({**compute_metrics(rows, ChexpertRuleLabeler(), resamples=0), "plugins": out})
    assert "chexbert: micro F1 (14) 1.0000, micro F1 (5) 1.0000" in table and "bertscore: skipped" in table


def test_a_failing_plugin_is_recorded_not_raised(tiny_chexbert, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.txt"):
        (broken / name).write_bytes((tiny_chexbert / name).read_bytes())
    state = torch.load(tiny_chexbert / "chexbert.pth", weights_only=True)
    del state["model_state_dict"]["module.linear_heads.13.bias"]
    torch.save(state, broken / "chexbert.pth")
    out = plugins.run_plugins(["x"], ["y"], {"chexbert": str(broken)}, torch.device("cpu"))
    assert out["chexbert"] == f"failed: {broken / 'chexbert.pth'} lacks weight linear_heads.13.bias"
