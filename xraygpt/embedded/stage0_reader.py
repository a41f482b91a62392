"""The stage-0 LLM of an embedded proof asked with the slot words in the image slot (text only).

Stage 0 of the embedded proofs (`vqa_proof`, `study_proof`) trains the LLM on conversations whose
image slots hold each image's slot words (`<Img>o o effusion ...</Img>`) instead of image tokens.
Asking that LLM the held-out questions the same way tells a miss of its own reading from one of
the images and the projection (stages 1-2): `Stage0Reader(run).ask(pairs)`.
"""

from __future__ import annotations

from pathlib import Path


class Stage0Reader:
    """The exported LLM of a finished stage-0 run (its config.yaml and hf_model/), greedy, in eval mode.

    Args:
        stage0_run: the stage-0 output_dir.
        seed: the model builder's seed.
        max_new_tokens: the longest answer generated (tokens).
    """

    def __init__(self, stage0_run: Path, seed: int = 0, max_new_tokens: int = 80):
        from xraygpt import builders
        from xraygpt.config import load_config
        from xraygpt.data.collate import ConversationPromptCollator
        from xraygpt.models.generation import GenerationSettings

        cfg = load_config(stage0_run / "config.yaml", [f"model.llm.path={stage0_run / 'hf_model'}"])
        self.model = builders.build_model(cfg.model, seed)
        self.model.eval()
        self.collate = ConversationPromptCollator(self.model.prompt_tokenizer)
        self.generation = GenerationSettings(max_new_tokens=max_new_tokens)

    def ask(self, pairs: list[tuple[str, str]], batch_size: int = 50) -> tuple[list[str], list[str]]:
        """(answers, references) of (question with its slot words, reference answer) pairs, in order."""
        answers: list[str] = []
        references: list[str] = []
        for start in range(0, len(pairs), batch_size):
            prompts = self.collate([{"image_id": str(start + k), "system": None, "turns": [pair]}
                                    for k, pair in enumerate(pairs[start:start + batch_size])])
            answers += self.model.generate(prompts["input_ids"], prompts["attention_mask"], self.generation)
            references += prompts["references"]
        return answers, references
