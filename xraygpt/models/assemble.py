"""`assemble_model(cls, section)`: a model class built from its config section's values.

Each entry of the class's CONFIG_SECTIONS (encoder, llm, prompt) is built by its builder from the
sub-section of the same name; the LLM builder gives (llm, tokenizer), the prompt builder the
prompt format; everything else in `section` goes to the constructor as it is.  Used by
`builders.build_model` (a config's `model`) and by `model_folder.build_from_folder` (an exported
folder's model.yaml), so the two never differ.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def assemble_model(cls: type, section: dict[str, Any]) -> nn.Module:
    """`cls(**constructor arguments)` from `section` (without `arch` and `ckpt`); `section` is not changed."""
    kwargs = {k: v for k, v in section.items() if k not in ("arch", "ckpt")}
    for name, builder in getattr(cls, "CONFIG_SECTIONS", {}).items():
        built = builder(**kwargs.pop(name))
        if name == "llm":
            kwargs["llm"], kwargs["tokenizer"] = built
        elif name == "prompt":
            kwargs["prompt_format"] = built
        else:
            kwargs[name] = built
    return cls(**kwargs)
