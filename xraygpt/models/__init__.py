"""Model components: MedCLIP vision encoder, projector, LLM loading, splicing, the XrayGPT model."""
