"""Reading uploads for the demo (PNG/JPEG, optional DICOM) and the demo settings; no Gradio needed."""

import sys

import numpy as np
import pytest
from PIL import Image

from xraygpt.data.transforms import to_grayscale
from xraygpt.ui.settings import DemoSettings
from xraygpt.ui.uploads import UploadError, read_xray

CAP, MIN_SIDE = 50_000_000, 32


def test_png_jpeg_and_16_bit_are_read(tmp_path):
    Image.new("L", (64, 48), 90).save(tmp_path / "a.png")
    Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "b.jpg")
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(tmp_path / "c.png")
    assert read_xray(tmp_path / "a.png", CAP, MIN_SIDE).size == (64, 48)
    assert read_xray(tmp_path / "b.jpg", CAP, MIN_SIDE).mode == "RGB"
    wide = to_grayscale(read_xray(tmp_path / "c.png", CAP, MIN_SIDE))
    assert wide.getextrema() == (0, 255)


@pytest.mark.parametrize("name,content,message", [
    ("notes.txt", b"hello\n", "'notes.txt' is not a PNG or JPEG image"),
    ("scan.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n", "is not a PNG or JPEG image"),
    ("empty.png", b"", "is not a PNG or JPEG image"),
])
def test_non_images_are_refused_by_content(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UploadError, match=message):
        read_xray(tmp_path / name, CAP, MIN_SIDE)


def test_truncated_png(tmp_path):
    Image.effect_noise((128, 128), 40).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UploadError, match="'cut.png' is a damaged PNG image"):
        read_xray(tmp_path / "cut.png", CAP, MIN_SIDE)


def test_sizes_are_checked_from_the_header(tmp_path):
    Image.new("L", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(UploadError, match="is 1x1 pixels; a chest X-ray needs at least 32"):
        read_xray(tmp_path / "dot.png", CAP, MIN_SIDE)
    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(UploadError, match="300x200 = 60,000 pixels, more than the 50,000"):
        read_xray(tmp_path / "big.png", 50_000, MIN_SIDE)


def test_missing_upload(tmp_path):
    with pytest.raises(UploadError, match=r"cannot read .gone.png. \(No such file"):
        read_xray(tmp_path / "gone.png", CAP, MIN_SIDE)


def test_dicom_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "scan.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(UploadError, match="'scan.dcm' is a DICOM file; reading DICOM needs the optional pydicom"):
        read_xray(tmp_path / "scan.dcm", CAP, MIN_SIDE)


def _write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_with_pydicom(tmp_path):
    pytest.importorskip("pydicom", minversion="3")
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 64, (48, 1))  # dark left, bright right, 12 bits
    plain = to_grayscale(read_xray(_write_dicom(tmp_path / "a.dcm", ramp), CAP, MIN_SIDE))
    assert plain.size == (64, 48) and plain.getpixel((0, 0)) == 0 and plain.getpixel((63, 0)) == 255
    inverted = to_grayscale(read_xray(_write_dicom(tmp_path / "b.dcm", ramp, "MONOCHROME1"), CAP, MIN_SIDE))
    assert inverted.getpixel((0, 0)) == 255 and inverted.getpixel((63, 0)) == 0
    with pytest.raises(UploadError, match="'a.dcm' is 64x48 = 3,072 pixels, more than"):
        read_xray(tmp_path / "a.dcm", 1000, MIN_SIDE)
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x01" * 40)
    with pytest.raises(UploadError, match="'junk.dcm' is a DICOM file without a readable image"):
        read_xray(tmp_path / "junk.dcm", CAP, MIN_SIDE)


def test_auth_file(tmp_path):
    (tmp_path / "users.txt").write_text("# logins\nalice:secret\n\nbob: pa:ss\n")
    assert DemoSettings(auth_file=str(tmp_path / "users.txt")).auth() == [("alice", "secret"), ("bob", " pa:ss")]
    assert DemoSettings().auth() is None
    (tmp_path / "bad.txt").write_text("alice\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected user:password"):
        DemoSettings(auth_file=str(tmp_path / "bad.txt")).auth()
    with pytest.raises(ValueError, match="does not exist"):
        DemoSettings(auth_file=str(tmp_path / "none.txt")).auth()


@pytest.mark.parametrize("kwargs,message", [
    ({"port": 70000}, "demo.port"),
    ({"concurrency_limit": 0}, "demo.concurrency_limit"),
    ({"temperature": -0.5}, "demo.temperature"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DemoSettings(**kwargs)


def test_sweeper_deletes_old_uploads_and_survives_its_folder_going(tmp_path, monkeypatch):
    import os
    import shutil

    from xraygpt.ui.app import UploadSweeper

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    sweeper = UploadSweeper(age=3600)
    old, new = sweeper.folder / "a" / "old.png", sweeper.folder / "new.png"
    old.parent.mkdir()
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1, 1))
    assert sweeper.sweep() == 1
    assert not old.exists() and new.exists()
    shutil.rmtree(sweeper.folder)
    assert sweeper.sweep() == 0

    def vanished_mid_walk(self, pattern):  # a sub-folder removed while rglob lists it
        raise FileNotFoundError(2, "No such file or directory", str(self / "a"))
        yield

    monkeypatch.setattr(type(sweeper.folder), "rglob", vanished_mid_walk)
    assert sweeper.sweep() == 0  # no traceback from the sweeper thread at process exit or teardown
