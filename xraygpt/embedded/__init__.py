"""The embedded default: an application of the library that runs the whole recipe offline and tiny.

A synthetic chest X-ray world, a tiny MedCLIP-format encoder and a tiny LLaMA made on the spot,
and the scores that tell whether the aligner learned to read the image.  It imports the library;
the library never imports it (tests/test_imports.py checks).  Modules, each owning one job:

    anatomy     FINDINGS and `sample_case`: every random choice of one radiograph (body coordinates in [-1, 1])
    render      `render(case, size)` / `draw_radiograph`: a case as a size x size 8-bit grayscale image
    summaries   `write_summary` / `case_summary`: radiology-style summaries from templates
    labeler     `findings_in_text`: which FINDINGS a free-text summary asserts (negation-aware)
    scores      `finding_scores` / `format_table`: finding-level P/R/F1 of generated summaries
    dataset     `generate_dataset`: a synthetic dataset in XrayGPT's layout, with labels.json
    assets      `write_tiny_encoder` (with its pretraining), `write_tiny_llm`, `conversation_texts`
    pipeline    `prepare`, `evaluate_findings`, `report`, `summarise_seeds`
    __main__    the command line: `python -m xraygpt.embedded prepare|data|evaluate|report|summary`
"""
