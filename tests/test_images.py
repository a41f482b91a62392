"""The one image reader (xraygpt.data.images) in every entry point: sizes from the header with the
real reason, EXIF orientation, DICOM (VOI/window, MONOCHROME1, view, compressed without a decoder)
in the demo, datasets, prepare and evaluate; and the R2Gen reader's quoted split names."""

import json
import logging
import random
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from xraygpt.data.datasets import CaptionDataset
from xraygpt.data.formats import DatasetError, read_samples, readable_header
from xraygpt.data.images import ImageReadError, is_dicom, load_xray, read_header
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval, decode_image, to_grayscale
from xraygpt.ui.settings import DemoSettings
from xraygpt.ui.uploads import UploadError, read_xray

CAP = 50_000_000


# ------------------------------------------------------------------------------------ helpers
def _huge_png(path, side=30000):
    """A valid 1-bit grayscale PNG of side x side pixels (all black), written without PIL (which
    would need side**2 bytes of memory); the compressed data is a few hundred kilobytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer, parts = zlib.compressobj(9), []
    for _ in range(0, side, 1000):
        parts.append(packer.compress(row * min(1000, side)))
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", transfer_syntax=None, preamble=True, **tags):
    """A one-frame DICOM file of `pixels` (uint16, 12 bits stored); `tags` are set on the data set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if transfer_syntax is None:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    else:  # encapsulated fragments: what a compressed file holds (the bytes are never decoded)
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 compressed frame"])
        ds["PixelData"].VR = "OB"
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=False, little_endian=True)  # a bare data set: no preamble, no DICM
    return path


def _undecodable_syntax():
    """A compressed transfer syntax that no installed pydicom decoder reads (JPEG-LS here)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2K, JPEG2000, JPEGLSLossless, JPEGLSNearLossless

    for uid in (JPEGLSLossless, JPEGLSNearLossless, JPEG2000, HTJ2K):
        if not get_decoder(uid).is_available:
            return uid
    raise AssertionError("every candidate compressed syntax has a decoder installed; pick another one")


RAMP = np.tile(np.arange(64, dtype=np.uint16) * 64, (48, 1))  # dark left, bright right, 12 bits


# -------------------------------------------------------------------------------- bad input
def test_huge_png_is_refused_with_its_size_not_as_not_an_image(tmp_path):
    """Issue 16: a valid 30000x30000 PNG was answered "not a PNG or JPEG image" (PIL's bomb error)."""
    huge = _huge_png(tmp_path / "huge.png")
    cap = DemoSettings().max_image_pixels
    message = f"is 30000x30000 = 900,000,000 pixels, more than the {cap:,} allowed"
    with pytest.raises(UploadError, match=f"'huge.png' {message}"):
        read_xray(huge, cap, DemoSettings().min_image_side)  # the demo
    with pytest.raises(ValueError, match=message):
        decode_image(huge, cap)  # the datasets
    with pytest.raises(ImageReadError, match=f"the image {message}"):
        load_xray(huge.read_bytes(), cap)  # bytes (shards, the server)
    assert read_header(huge).width == 30000 and readable_header(huge)  # a real image: its header reads


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo of a film: stored sideways with orientation 6 (rotate 90 degrees clockwise to view)."""
    stored = np.zeros((20, 40), dtype=np.uint8)
    stored[:, 20:] = 255  # left half dark, right half bright, as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored, "L").save(tmp_path / "photo.jpg", exif=exif, quality=95)
    for image in (read_xray(tmp_path / "photo.jpg", CAP, 1), decode_image(tmp_path / "photo.jpg", CAP),
                  decode_image((tmp_path / "photo.jpg").read_bytes(), CAP)):
        assert image.size == (20, 40)  # turned upright: portrait
        gray = np.asarray(image.convert("L"), dtype=float)
        assert gray[:15].mean() < 40 and gray[-15:].mean() > 215  # the stored left side is now on top
    Image.fromarray(stored, "L").save(tmp_path / "plain.jpg", quality=95)
    assert decode_image(tmp_path / "plain.jpg", CAP).size == (40, 20)  # no orientation: unchanged


def test_r2gen_split_names_are_quoted(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [], "val": [], "   ": [], "note": "x"}))
    with pytest.raises(DatasetError, match=r"has no split 'test' \(splits: 'train', 'val', '   '\)"):
        read_samples("r2gen", tmp_path, None, None, "test", verify_images=False)


# ------------------------------------------------------------------------------------ DICOM
def test_dicom_window_monochrome1_and_view(tmp_path):
    plain = load_xray(write_dicom(tmp_path / "a.dcm", RAMP, ViewPosition="PA"), CAP)
    assert plain.view == "PA" and plain.header.format == "DICOM" and plain.image.mode == "F"
    gray = to_grayscale(plain.image)
    assert gray.size == (64, 48) and gray.getpixel((0, 0)) == 0 and gray.getpixel((63, 0)) == 255
    inverted = to_grayscale(load_xray(write_dicom(tmp_path / "b.dcm", RAMP, "MONOCHROME1"), CAP).image)
    assert inverted.getpixel((0, 0)) == 255 and inverted.getpixel((63, 0)) == 0
    # a window narrower than the data: values below its bottom are black, above its top white
    windowed = load_xray(write_dicom(tmp_path / "w.dcm", RAMP, WindowCenter=2048, WindowWidth=1024), CAP).image
    row = np.asarray(windowed)[0]
    assert row[:16].max() == row.min() and row[-16:].min() == row.max() and len(set(row[24:40].tolist())) > 8


@pytest.mark.parametrize("tags,view", [
    ({"ViewPosition": "PA"}, "PA"),
    ({"ViewPosition": "AP"}, "AP"),
    ({"ViewPosition": "LL"}, "LATERAL"),
    ({"ViewPosition": "AP AXIAL"}, "AP AXIAL"),
    ({"ViewCodeSequence": "antero-posterior"}, "AP"),
    ({"ViewCodeSequence": "right lateral"}, "LATERAL"),
    ({}, None),
])
def test_dicom_view_from_tags(tmp_path, tags, view):
    if "ViewCodeSequence" in tags:
        from pydicom.dataset import Dataset

        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "x", "SCT", tags["ViewCodeSequence"]
        tags = {"ViewCodeSequence": [code]}
    path = write_dicom(tmp_path / "v.dcm", RAMP, **tags)
    assert load_xray(path, CAP).view == view and read_header(path).view == view


def test_raster_images_have_no_view(tmp_path):
    Image.new("L", (40, 40), 9).save(tmp_path / "a.png")
    assert load_xray(tmp_path / "a.png", CAP).view is None


def test_compressed_dicom_without_decoder_is_one_clear_error(tmp_path):
    uid = _undecodable_syntax()
    path = write_dicom(tmp_path / "scan.dcm", RAMP, transfer_syntax=uid)
    needle = f"is a DICOM file compressed as {uid.name} ({uid}), and no installed decoder reads it"
    for reader in (lambda: load_xray(path, CAP), lambda: read_header(path), lambda: decode_image(path, CAP)):
        with pytest.raises(ImageReadError) as info:
            reader()
        assert str(info.value).startswith(f"'{path}' {needle}") and "\n" not in str(info.value)
    with pytest.raises(UploadError, match=f"^'scan.dcm' {needle}".replace("(", r"\(").replace(")", r"\)")):
        read_xray(path, CAP, 32)
    assert not readable_header(path)


def test_dicom_by_name_or_by_marker_and_from_bytes(tmp_path):
    bare = write_dicom(tmp_path / "bare.dcm", RAMP, preamble=False)
    assert bare.read_bytes()[128:132] != b"DICM" and is_dicom(bare)
    assert to_grayscale(decode_image(bare, CAP)).getpixel((63, 0)) == 255
    marked = write_dicom(tmp_path / "scan.bin", RAMP)  # any name: the marker decides
    assert is_dicom(marked) and decode_image(marked, CAP).size == (64, 48)
    assert decode_image(marked.read_bytes(), CAP).size == (64, 48)  # shard members, data: URLs
    with pytest.raises(ImageReadError, match="is 64x48 = 3,072 pixels, more than the 1,000 allowed"):
        decode_image(marked.read_bytes(), 1000)


def test_truncated_dicom_is_one_error_naming_the_file(tmp_path):
    full = write_dicom(tmp_path / "full.dcm", RAMP).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(full[: len(full) - 3000])
    with pytest.raises(ImageReadError) as info:
        decode_image(tmp_path / "cut.dcm", CAP)
    assert f"'{tmp_path / 'cut.dcm'}'" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------- datasets and prepare
def _xraygpt_folder(root, names):
    (root / "image").mkdir(parents=True)
    anns = [{"image_id": name, "caption": f"Caption of {name}."} for name in names]
    (root / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    return root


def test_dataset_reads_dicom_and_counts_bad_dicom_as_bad_samples(tmp_path, caplog):
    root = _xraygpt_folder(tmp_path / "data", ["good", "png", "cut", "packed"])
    write_dicom(root / "image" / "good.dcm", RAMP, ViewPosition="AP")
    Image.new("L", (64, 48), 80).save(root / "image" / "png.png")
    full = write_dicom(tmp_path / "full.dcm", RAMP).read_bytes()
    (root / "image" / "cut.dcm").write_bytes(full[: len(full) - 3000])  # the header reads, the pixels do not
    write_dicom(root / "image" / "packed.dcm", RAMP, transfer_syntax=_undecodable_syntax())

    samples, dropped, _ = read_samples("xraygpt", root, None, None, "train", verify_images=True)
    assert [s[0] for s in samples] == ["good", "png", "cut"] and dropped["image unreadable"] == ["packed"]

    all_samples, _, _ = read_samples("xraygpt", root, None, None, "train", verify_images=False)
    dataset = CaptionDataset("mimic", all_samples, MedCLIPImageEval(16), CaptionProcessor(), ["<ImageHere> Describe."], CAP)
    with caplog.at_level(logging.WARNING):
        items = [dataset.get(i, random.Random(i)) for i in range(len(dataset))]
    # cut -> next sample (packed, undecodable) -> next (good): two failures counted, never a crash
    assert [item["image_id"] for item in items] == ["good", "png", "good", "good"]
    assert dataset.decode_failures == 3
    assert "cut.dcm" in caplog.text and "packed.dcm" in caplog.text and "no installed decoder" in caplog.text
    assert items[0]["pixel_values"].shape == (3, 16, 16)


def test_prepare_reads_dicom_releases(tmp_path):
    from xraygpt.data.prepare.openi import prepare_openi
    from test_prepare import _openi_report

    xml, dcm = tmp_path / "ecgen-radiology", tmp_path / "NLMCXR_dcm"
    dcm.mkdir()
    for n in range(1, 11):
        name = f"CXR{n}_IM-{n:04d}-1001"
        _openi_report(xml, n, [name])
        write_dicom(dcm / f"{name}.dcm", RAMP + n, ViewPosition="PA")
    write_dicom(dcm / "CXR3_IM-0003-1001.dcm", RAMP, transfer_syntax=_undecodable_syntax())  # not readable here
    out = tmp_path / "out"
    stats = prepare_openi(xml, dcm, out, (0.6, 0.2, 0.2), seed=1, image_mode="link", verify_images=True)
    kept = {a["image_id"]: split for split in ("train", "val", "test") if (out / split).is_dir()
            for a in json.loads((out / split / "filter_cap.json").read_text())["annotations"]}
    assert sorted(kept) == sorted(f"{n}_1" for n in range(1, 11) if n != 3)
    assert {d["id"]: d["reason"] for d in stats["dropped"] if d["unit"] == "image"} == {"3_1": "image unreadable"}
    split = kept["1_1"]
    link = out / split / "image" / "1_1.dcm"
    assert link.is_symlink() and to_grayscale(decode_image(link, CAP)).size == (64, 48)
    samples, _, _ = read_samples("xraygpt", out / split, None, None, split, verify_images=True)
    assert "1_1" in {s[0] for s in samples}  # the prepared split reads as a dataset


def test_evaluate_reads_a_dicom_split(tiny_assets, tiny_model_factory, tmp_path, capsys, one_torch_thread):
    """evaluate.py on the tiny val split with every image converted to DICOM, one of them truncated:
    7 scored, the bad one skipped and counted."""
    from test_evaluate import eval_config, read_rows, run_main
    from xraygpt.training.checkpoint import atomic_save

    model = tiny_model_factory(seed=1)
    ckpt = tmp_path / "checkpoint_last.pt"
    atomic_save({"model": model.trainable_state_dict(), "step": 1}, ckpt)
    split = tmp_path / "split"
    shutil.copytree(tiny_assets["val"], split)
    pngs = sorted((split / "image").glob("*.png"))
    for png in pngs:
        pixels = (np.asarray(Image.open(png).convert("L"), dtype=np.uint16) * 16)
        write_dicom(png.with_suffix(".dcm"), pixels)
        png.unlink()
    broken = pngs[2].with_suffix(".dcm")
    broken.write_bytes(broken.read_bytes()[:-500])
    out = tmp_path / "out"
    code, stdout, err = run_main(eval_config(tiny_assets, ckpt, out, split=split), tmp_path / "c.yaml", capsys)
    assert code == 0, err
    assert "1 skipped (1 image does not decode)" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_scored"] == 7 and metrics["skipped"]["by_reason"] == {"image does not decode": [broken.stem]}
    assert len(read_rows(out)) == 7
