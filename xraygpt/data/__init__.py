"""Data: preprocessing, datasets in XrayGPT layout, sampling, collation, synthetic data."""
