"""Data: preprocessing, datasets (XrayGPT, R2Gen and webdataset-shard formats; VQA-RAD and SLAKE questions), preparation of the
raw MIMIC-CXR / OpenI releases, sampling, collation.  (The synthetic dataset generator is part of
the embedded default, xraygpt/embedded/.)"""
