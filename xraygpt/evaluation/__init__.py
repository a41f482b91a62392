"""Evaluation: perplexity of the LLM, finding-level scores of generated summaries."""
