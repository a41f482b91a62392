"""XrayGPT-style chest X-ray summarisation: frozen MedCLIP -> linear projection -> frozen Vicuna."""

__version__ = "0.1.0"
