"""Dataset preparation from the raw releases, and conversion to shards (`python -m xraygpt.data.prepare`).

    mimic    MIMIC-CXR reports + MIMIC-CXR-JPG  -> XrayGPT layout per official split   (mimic.py)
    openi    OpenI ecgen-radiology XML + PNGs   -> XrayGPT layout per seeded split     (openi.py)
    shards   XrayGPT or R2Gen JSON dataset      -> webdataset shards                  (to_shards.py)

Shared pieces: report sections (sections.py), the paper's filters and summary cleaning
(cleaning.py), splits (splits.py), the steps and output layout (pipeline.py), the per-split
study files, studies.jsonl (study_files.py: views, priors, sections), and the stats.json report
every run writes (stats.py).
"""
