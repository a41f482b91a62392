"""Small study files for the study tests, built from the tiny assets' images (tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# (study id, subject, [(view, image index)], indication, findings, impression, summary, prior)
STUDIES = [
    ("s1", "p1", [("PA", 0), ("LATERAL", 1)], "Cough and fever.",
     "Heart size is normal. New small left pleural effusion. No pneumothorax.",
     "Small left pleural effusion, new since the prior study.", "Small left pleural effusion. No pneumothorax.", None),
    ("s2", "p1", [("LATERAL", 2), ("AP", 3), ("PA", 4)], "",
     "Stable mild cardiomegaly. The lungs are clear.", "No acute process. Unchanged from prior.",
     "Mild cardiomegaly. The lungs are clear. No acute process.", "s1"),
    ("s3", "p2", [("FRONTAL", 5)], "Shortness of breath.",
     "Right lower lobe opacity. No effusion.", "Pneumonia in the right lower lobe.",
     "Right lower lobe opacity. No effusion. Pneumonia in the right lower lobe.", None),
    ("s4", "p3", [("PA", 6), ("mystery", 7)], "Follow-up.",
     "The lungs are hyperinflated. No focal consolidation.", "COPD.",
     "The lungs are hyperinflated. No focal consolidation. COPD.", "s1"),  # prior of another subject
]


def image_files(tiny_assets: dict) -> list[Path]:
    return sorted((tiny_assets["train"] / "image").iterdir())


def write_study_folder(tiny_assets: dict, folder: Path, studies=STUDIES) -> Path:
    """A split folder: image/ (copies of tiny-asset images) + studies.jsonl; returns the folder."""
    files = image_files(tiny_assets)
    (folder / "image").mkdir(parents=True, exist_ok=True)
    lines = []
    for study_id, subject, images, indication, findings, impression, summary, prior in studies:
        entries = []
        for k, (view, index) in enumerate(images):
            name = f"{study_id}_{k}{files[index].suffix}"
            shutil.copy(files[index], folder / "image" / name)
            entries.append({"image_id": f"{study_id}_{k}", "path": f"image/{name}", "view": view})
        lines.append(json.dumps({"study_id": study_id, "subject_id": subject, "images": entries,
                                 "indication": indication, "comparison": "", "findings": findings,
                                 "impression": impression, "summary": summary, "prior_study_id": prior}))
    (folder / "studies.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_rexrank_file(tiny_assets: dict, folder: Path) -> Path:
    """A ReXrank-style JSON as released (keyed by study id, leading-slash paths, context strings, a NaN
    section) with its images under folder/files; returns the JSON's path."""
    files = image_files(tiny_assets)
    root = folder / "files"
    records = {}
    for n, (study, views) in enumerate([("50000001", ["postero-anterior", "lateral"]), ("50000002", ["Frontal"]),
                                        ("50000003", ["lateral", "antero-posterior", "lateral"])]):
        paths = []
        for k, _ in enumerate(views):
            relative = f"p10/p100{n}/s{study}/{k}{files[n * 3 + k].suffix}"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(files[n * 3 + k], root / relative)
            paths.append("/" + relative)
        records[study] = {
            "image_path": paths, "frontal_lateral": views, "key_image_path": paths[-1] if n == 2 else paths[0],
            "context": f"Age:50-60.Gender:{'MF'[n % 2]}.Indication: {['Cough.', 'nan', 'Chest pain.'][n]} Comparison: None.",
            "section_findings": ["The heart is normal in size. Small right effusion.", "Clear lungs.",
                                 "New left basilar opacity since the prior study."][n],
            "section_impression": [float("nan"), "No acute disease.", "Possible pneumonia."][n],
            "subject_id": 1000 + n, "split": "test",
        }
    path = folder / "ReXRank_test.json"
    path.write_text(json.dumps(records))  # json.dumps writes NaN, as the released files hold it
    return path
