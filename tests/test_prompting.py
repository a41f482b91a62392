import pytest

from xraygpt.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from xraygpt.models.llm import load_tokenizer
from xraygpt.prompting import PromptFileError, PromptFormat, PromptTokenizer, load_instructions


@pytest.fixture(scope="module")
def ptok(tiny_assets):
    return PromptTokenizer(load_tokenizer(tiny_assets["llm"]), PromptFormat(system="SYS ", max_txt_len=8), 5)


def test_repo_instructions(repo):
    instructions = load_instructions(repo / "prompts" / "alignment.txt")
    assert len(instructions) >= 15 and len(set(instructions)) == len(instructions)
    assert all("<Img><ImageHere></Img>" in i for i in instructions)


def test_template_is_the_papers():
    fmt = PromptFormat()
    assert fmt.render("<Img><ImageHere></Img> Describe.") == "###Doctor: <Img><ImageHere></Img> Describe. ###Assistant: "


def test_example_layout_and_label_mask(ptok):
    ids, labels = ptok.encode_example("<Img><ImageHere></Img> Describe the image.", "the heart is normal")
    tok = ptok.tokenizer
    assert ids[0] == tok.bos_token_id
    assert ids.count(IMAGE_TOKEN_ID) == 5
    first_target = next(i for i, l in enumerate(labels) if l != IGNORE_INDEX)
    assert all(l == IGNORE_INDEX for l in labels[:first_target])
    assert labels[first_target:] == ids[first_target:]
    prompt_text = tok.decode([i for i in ids[:first_target] if i != IMAGE_TOKEN_ID], skip_special_tokens=True)
    assert prompt_text.startswith("SYS ###Doctor: <Img>") and prompt_text.rstrip().endswith("###Assistant:")
    assert tok.decode(ids[first_target:]) .replace(" ", "").startswith("theheart")


def test_target_ends_with_end_symbol_and_is_truncated(ptok):
    short = ptok.encode_target("normal")
    assert ptok.tokenizer.decode(short).endswith("###")
    long = ptok.encode_target("the heart is normal " * 20)
    assert len(long) == 8


def test_decode_answer_cuts_at_end_symbol(ptok):
    ids = ptok.tokenizer("the lungs are clear.### extra", add_special_tokens=False).input_ids
    assert ptok.decode_answer(ids) == "the lungs are clear."


def test_bad_instruction_files(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        load_instructions(tmp_path / "none.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("<Img><ImageHere></Img> fine\nno placeholder here\n")
    with pytest.raises(PromptFileError, match=r"bad.txt:2"):
        load_instructions(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(PromptFileError, match="no instructions"):
        load_instructions(empty)


def test_bad_template():
    with pytest.raises(ValueError, match="exactly once"):
        PromptFormat(template="no slot")
