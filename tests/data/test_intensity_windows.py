"""Intensity windows, stacked windows and CLAHE, on real CT files and synthetic 16-bit images.

The real files install with pydicom (``CT_small.dcm``) and pydicom-data (a 512x512 CT, a
MONOCHROME1 radiograph, an enhanced multi-frame CT). Every expected pixel is worked out by
hand below from the file's own raw values:

    HU = raw * RescaleSlope + RescaleIntercept
    windowed = clip((HU - (level - width / 2)) / width, 0, 1), rendered as round(255 * windowed)
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from tests.dicom_files import write_ct

from vitkit.bundle import Bundle, BundleMeta, save_bundle
from vitkit.classify.config import TrainConfig
from vitkit.config import dump_config, load_config
from vitkit.data import load_rgb, scan, validate_samples
from vitkit.data.files import find_images
from vitkit.data.intensity import (
    PRESETS,
    IntensitySpec,
    bundle_intensity,
    decode_image,
    decode_upload,
    load_image,
    parse_window,
    rendered_for,
)
from vitkit.errors import BundleError, ConfigError

SOFT_TISSUE = IntensitySpec(windows=["40:400"])


def real_file(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


def pixel(image: Image.Image, row: int, column: int) -> list[int]:
    return [int(v) for v in np.asarray(image)[row, column]]


# ---------------------------------------------------------------- real CT files, by hand
def test_ct_small_windowed_matches_the_hand_computed_values() -> None:
    path = real_file("CT_small.dcm")
    raw = pydicom.dcmread(path)
    assert (float(raw.RescaleSlope), float(raw.RescaleIntercept)) == (1.0, -1024.0)
    stored = raw.pixel_array
    assert [int(stored[100, 20]), int(stored[10, 100]), int(stored[64, 64]),
            int(stored[32, 32])] == [1043, 1227, 1928, 487]

    image, conversions = load_image(path, intensity=SOFT_TISSUE)

    assert image.mode == "RGB" and image.size == (128, 128) and conversions == []
    # 1043 - 1024 = 19 HU: (19 + 160) / 400 = 0.4475 -> 114.11 -> 114
    assert pixel(image, 100, 20) == [114, 114, 114]
    # 1227 - 1024 = 203 HU: (203 + 160) / 400 = 0.9075 -> 231.41 -> 231
    assert pixel(image, 10, 100) == [231] * 3
    # 904 HU is above 40 + 200: white; -537 HU is below 40 - 200: black
    assert pixel(image, 64, 64) == [255] * 3
    assert pixel(image, 32, 32) == [0] * 3


def test_three_windows_fill_one_channel_each_and_two_leave_the_mean_in_the_third() -> None:
    path = real_file("CT_small.dcm")
    three = load_image(path, intensity=IntensitySpec(windows=["brain", "soft-tissue",
                                                               "lung"]))[0]
    # 19 HU: brain 40:80 -> 19 / 80 = 0.2375 -> 60.56 -> 61; soft tissue -> 114;
    # lung -600:1500 -> (19 + 1350) / 1500 = 0.91267 -> 232.73 -> 233
    assert pixel(three, 100, 20) == [61, 114, 233]
    # -537 HU: brain 0, soft tissue 0, lung (-537 + 1350) / 1500 = 0.542 -> 138.21 -> 138
    assert pixel(three, 32, 32) == [0, 0, 138]

    two = load_image(path, intensity=IntensitySpec(windows=["soft-tissue", "lung"]))[0]
    # third channel: (0.4475 + 0.91267) / 2 = 0.68008 -> 173.42 -> 173
    assert pixel(two, 100, 20) == [114, 233, 173]


def test_a_512_px_ct_from_pydicom_data() -> None:
    path = real_file("693_UNCR.dcm")
    raw = pydicom.dcmread(path)
    assert (raw.Modality, raw.Rows, raw.Columns) == ("CT", 512, 512)
    assert (float(raw.RescaleSlope), float(raw.RescaleIntercept)) == (1.0, -1024.0)
    stored = raw.pixel_array
    assert [int(stored[256, 256]), int(stored[300, 200]), int(stored[0, 0])] == [1048, 1042,
                                                                                -2000]

    image = load_image(path, intensity=SOFT_TISSUE)[0]

    # 24 HU: (24 + 160) / 400 = 0.46 -> 117.3 -> 117; 18 HU: 0.445 -> 113.48 -> 113
    assert pixel(image, 256, 256) == [117] * 3
    assert pixel(image, 300, 200) == [113] * 3
    assert pixel(image, 0, 0) == [0] * 3  # -3024 HU: the padding outside the scanned circle


def test_monochrome1_is_flipped_after_the_window() -> None:
    path = real_file("RG1_UNCR.dcm")  # a computed radiograph: low values are shown white
    raw = pydicom.dcmread(path)
    assert raw.PhotometricInterpretation == "MONOCHROME1" and "RescaleSlope" not in raw
    stored = raw.pixel_array
    assert [int(stored[500, 500]), int(stored[100, 100])] == [14591, 22188]

    image = load_image(path, intensity=IntensitySpec(windows=["15000:30000"]))[0]

    # 14591 / 30000 = 0.48637, flipped 0.51363 -> 130.98 -> 131
    assert pixel(image, 500, 500) == [131] * 3
    # 22188 / 30000 = 0.7396, flipped 0.2604 -> 66.40 -> 66
    assert pixel(image, 100, 100) == [66] * 3


def test_an_enhanced_multiframe_ct_reads_its_first_frame_and_shared_rescale() -> None:
    path = real_file("eCT_Supplemental.dcm")
    raw = pydicom.dcmread(path)
    assert "RescaleIntercept" not in raw  # it sits in the shared functional groups
    transform = raw.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    assert float(transform.RescaleIntercept) == -1024.0
    frames = raw.pixel_array
    assert frames.shape == (2, 512, 512)
    assert [int(frames[0][256, 256]), int(frames[1][256, 256])] == [1105, 1022]

    image, conversions = load_image(path, intensity=SOFT_TISSUE)

    assert conversions == ["first frame of 2"]
    # frame 1: 1105 - 1024 = 81 HU: (81 + 160) / 400 = 0.6025 -> 153.64 -> 154
    # (frame 2 would give -2 HU -> 101)
    assert pixel(image, 256, 256) == [154] * 3


def test_without_a_spec_a_dicom_is_not_an_image_and_the_reason_says_why() -> None:
    from vitkit.data.images import ImageProblem

    with pytest.raises(ImageProblem, match=r"^not an image \(a DICOM file: .*--window"):
        load_rgb(real_file("CT_small.dcm"))


# ---------------------------------------------------------------- 16-bit and float images
def sixteen_bit_png(values: list[int]) -> bytes:
    pixels = np.array([values] * 8, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_16_bit_png_is_windowed_at_full_depth_not_min_max_scaled(tmp_path: Path) -> None:
    data = sixteen_bit_png([0, 1000, 1100, 1200, 1300, 1400, 40000, 65535])
    path = tmp_path / "scan.png"
    path.write_bytes(data)
    assert Image.open(path).mode == "I;16"

    image, _ = load_image(path, intensity=IntensitySpec(windows=["1200:400"]))

    # low = 1200 - 200 = 1000: [0, 0, 0.25, 0.5, 0.75, 1, 1, 1] * 255, rounded half to even
    assert np.asarray(image)[0, :, 0].tolist() == [0, 0, 64, 128, 191, 255, 255, 255]
    # without a window the image's own min..max is stretched: 1000 of 65535 -> 3.9 -> 4
    assert np.asarray(load_rgb(path)[0])[0, :2, 0].tolist() == [0, 4]
    assert np.array_equal(np.asarray(decode_image(data, intensity=IntensitySpec(
        windows=["1200:400"]))[0]), np.asarray(image))


def test_a_float_tiff_keeps_negative_values_and_reads_nan_as_black(tmp_path: Path) -> None:
    values = np.array([[-1000.5, 0.0, 40.0, 240.0, np.nan, np.inf, -np.inf, 140.0]] * 8,
                      dtype=np.float32)
    path = tmp_path / "hu.tif"
    Image.fromarray(values).save(path)

    image, _ = load_image(path, intensity=SOFT_TISSUE)

    # low -160: 0 HU -> 0.4 -> 102; 40 -> 0.5 -> 127.5 -> 128; 140 -> 0.75 -> 191.25 -> 191
    assert np.asarray(image)[0, :, 1].tolist() == [0, 102, 128, 255, 0, 255, 0, 191]


def test_a_colour_image_is_refused_under_a_window_and_grey_saved_as_rgb_is_read(
        tmp_path: Path) -> None:
    from vitkit.data.images import ImageProblem

    grey = np.full((8, 8, 3), 140, np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    # low = 128 - 32 = 96: (140 - 96) / 64 = 0.6875 -> 175.31 -> 175
    assert pixel(load_image(tmp_path / "grey.png", intensity=IntensitySpec(
        windows=["128:64"]))[0], 0, 0) == [175] * 3
    colour = grey.copy()
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ImageProblem, match="^colour image"):
        load_image(tmp_path / "colour.png", intensity=SOFT_TISSUE)


# ---------------------------------------------------------------- presets and the spec
def test_presets_and_level_width_text() -> None:
    assert PRESETS == {"brain": (40.0, 80.0), "soft-tissue": (40.0, 400.0),
                       "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)}
    assert parse_window("Lung") == (-600.0, 1500.0)
    assert parse_window("soft_tissue") == (40.0, 400.0)
    assert parse_window("-600:1500") == (-600.0, 1500.0)
    assert parse_window("40.5:80") == (40.5, 80.0)
    with pytest.raises(ValueError, match="Did you mean 'lung'.*brain \\(40:80\\)"):
        parse_window("lungs")
    with pytest.raises(ValueError, match="unknown window '40-400'"):
        parse_window("40-400")


def test_the_spec_refuses_what_it_cannot_apply() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="4 windows given; at most 3"):
        IntensitySpec(windows=["brain", "lung", "bone", "soft-tissue"])
    with pytest.raises(ValidationError, match="width must be above 0: 40:0"):
        IntensitySpec(windows=["40:0"])
    with pytest.raises(ValidationError, match="at least one window or CLAHE"):
        IntensitySpec()
    with pytest.raises(ValidationError, match="not CLIP:TILES"):
        IntensitySpec(clahe="two:8")
    assert IntensitySpec(clahe="3").clahe is not None
    assert IntensitySpec(clahe="3").clahe.tiles == 8  # type: ignore[union-attr]


def test_a_bad_window_on_the_command_line_is_a_config_error_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="intensity.windows.*Did you mean 'bone'"):
        load_config(TrainConfig, None, {"intensity": {"windows": ["bones"], "clahe": None}})
    config = load_config(TrainConfig, None, {"intensity": {"windows": None, "clahe": "2.0:8"}})
    assert config.intensity == IntensitySpec(clahe={"clip": 2.0, "tiles": 8})
    assert load_config(TrainConfig, None, {"intensity": {"windows": None, "clahe": None}}
                       ).intensity is None


def test_the_spec_round_trips_through_the_run_config_and_the_bundle(tmp_path: Path) -> None:
    spec = IntensitySpec(windows=["soft-tissue", "-600:1500"], clahe="2.0:8")
    config = TrainConfig(data="x", intensity=spec)
    dump_config(config, tmp_path / "config.yaml")  # what --resume reads back
    assert load_config(TrainConfig, tmp_path / "config.yaml", {}).intensity == spec

    meta = BundleMeta(backbone={}, labels=["a", "b"], preprocessing={},
                      intensity=spec.model_dump(mode="json"))
    bundle = save_bundle(tmp_path / "bundle", None, meta)
    written = json.loads((bundle / "vitkit.json").read_text())["intensity"]
    assert written == {"windows": [[40.0, 400.0], [-600.0, 1500.0]],
                       "clahe": {"clip": 2.0, "tiles": 8}}
    assert bundle_intensity(Bundle.open(bundle).meta) == spec

    plain = BundleMeta(backbone={}, labels=["a", "b"], preprocessing={})
    assert bundle_intensity(plain) is None
    damaged = BundleMeta(backbone={}, labels=["a", "b"], preprocessing={},
                         intensity={"windows": [[40, -1]]})
    with pytest.raises(BundleError, match="'intensity' is damaged.*width must be above 0"):
        bundle_intensity(damaged, "b")


# ---------------------------------------------------------------- CLAHE
def test_clahe_equals_opencv_on_the_same_windowed_image() -> None:
    path = real_file("CT_small.dcm")
    hu = pydicom.dcmread(path).pixel_array * 1.0 - 1024.0
    windowed = np.rint(np.clip((hu - (40 - 400 / 2)) / 400, 0, 1) * 255).astype(np.uint8)
    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(windowed)

    image = load_image(path, intensity=IntensitySpec(windows=["40:400"], clahe="2.0:8"))[0]

    pixels = np.asarray(image)
    assert not np.array_equal(expected, windowed)  # it did change the image
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], expected)


def test_clahe_alone_equalises_each_channel_of_an_8_bit_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = (rng.random((48, 64, 3)) * np.array([60, 120, 250]) + 5).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "dim.png")
    operator = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4))

    image = load_image(tmp_path / "dim.png", intensity=IntensitySpec(clahe="3:4"))[0]

    for channel in range(3):
        assert np.array_equal(np.asarray(image)[..., channel],
                              operator.apply(np.ascontiguousarray(rgb[..., channel])))


# ---------------------------------------------------------------- folders and bad files
def test_a_folder_scan_skips_and_reports_bad_dicom_files(tmp_path: Path) -> None:
    hu = np.full((16, 16), 40.0)
    hu[4:12, 4:12] = 240.0
    for label in ("a", "b"):
        write_ct(tmp_path / label / f"{label}1.dcm", hu)
        write_ct(tmp_path / label / "IM0002", hu)  # no extension, as scanners write them
    good = (tmp_path / "a" / "a1.dcm").read_bytes()
    (tmp_path / "a" / "cut.dcm").write_bytes(good[:-100])  # the pixel data cut short
    write_ct(tmp_path / "b" / "header.dcm", None)  # a series header, no pixel data
    colour = real_file("SC_rgb.dcm").read_bytes()
    (tmp_path / "b" / "colour.dcm").write_bytes(colour)

    samples = scan(tmp_path).samples
    report = validate_samples(samples, progress=False, intensity=SOFT_TISSUE)

    assert sorted(s.path.name for s in report.usable) == ["IM0002", "IM0002", "a1.dcm",
                                                          "b1.dcm"]
    reasons = {s.path.name: s.reason for s in report.skipped}
    assert set(reasons) == {"cut.dcm", "header.dcm", "colour.dcm"}
    assert reasons["header.dcm"].startswith("no pixel data")
    assert reasons["colour.dcm"].startswith("colour DICOM (PhotometricInterpretation RGB")
    assert reasons["cut.dcm"].startswith("undecodable pixel data (The number of bytes of "
                                         "pixel data is less than expected")
    assert "3 skipped" in report.summary()
    image = load_image(tmp_path / "a" / "IM0002", intensity=SOFT_TISSUE)[0]
    assert pixel(image, 0, 0) == [128] * 3 and pixel(image, 8, 8) == [255] * 3  # 40, 240 HU


def test_folders_give_dicom_files_only_when_asked(tmp_path: Path) -> None:
    write_ct(tmp_path / "scan.dcm", np.zeros((8, 8)))
    write_ct(tmp_path / "1.2.840.113619.2.55", np.zeros((8, 8)))  # named by UID
    write_ct(tmp_path / "IM0001", np.zeros((8, 8)))
    (tmp_path / "README").write_text("not an image\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")

    found = sorted(p.name for p in find_images([str(tmp_path)], dicom=True)[0])
    assert found == ["1.2.840.113619.2.55", "IM0001", "photo.png", "scan.dcm"]
    assert [p.name for p in find_images([str(tmp_path)])[0]] == ["photo.png"]


def test_without_the_extra_a_window_asks_for_it(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    from vitkit.workflows.train import run_training

    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now fails
    with pytest.raises(ConfigError, match=r"pip install 'vitkit\[medical\]'"):
        load_image(real_file("CT_small.dcm"), intensity=SOFT_TISSUE)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"pip install 'vitkit\[medical\]'"):
        run_training(TrainConfig(data=str(tmp_path), intensity=SOFT_TISSUE, out=str(run_dir),
                                 model="test_resnet", weights="none"), progress=False)
    assert not run_dir.exists()  # refused before anything was written
    monkeypatch.setitem(sys.modules, "pydicom", pydicom)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ConfigError, match=r"CLAHE needs OpenCV.*vitkit\[medical\]"):
        load_image(real_file("CT_small.dcm"), intensity=IntensitySpec(clahe="2:8"))


# ---------------------------------------------------------------- uploads (the service)
def test_an_upload_is_rendered_once_per_served_spec() -> None:
    data = real_file("CT_small.dcm").read_bytes()
    lung = IntensitySpec(windows=["lung"])

    image = decode_upload(data, [SOFT_TISSUE, lung, SOFT_TISSUE])

    assert pixel(rendered_for(image, SOFT_TISSUE), 100, 20) == [114] * 3
    assert pixel(rendered_for(image, lung), 100, 20) == [233] * 3
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 120, 120)).save(png, format="PNG")
    plain = decode_upload(png.getvalue(), [])
    assert plain.mode == "RGB" and not plain.info.get("vitkit.intensity")
    # a model loaded after decoding (no rendering kept) applies its spec to the image itself:
    # (120 + 160) / 400 = 0.7 -> 178.5 -> 178
    assert pixel(rendered_for(plain, SOFT_TISSUE), 0, 0) == [178] * 3


def test_the_service_refuses_what_its_models_cannot_read() -> None:
    pytest.importorskip("fastapi")
    from vitkit.serve.bodies import decode_image as decode_for_service
    from vitkit.serve.errors import HttpProblem

    data = real_file("CT_small.dcm").read_bytes()
    with pytest.raises(HttpProblem) as refused:
        decode_for_service(data, "ct", 10_000_000)  # no served model reads DICOM
    assert refused.value.status == 415 and "a DICOM file" in refused.value.detail
    colour = real_file("SC_rgb.dcm").read_bytes()
    with pytest.raises(HttpProblem) as refused:
        decode_for_service(colour, "rgb", 10_000_000, [SOFT_TISSUE])
    assert refused.value.status == 422 and "colour DICOM" in refused.value.detail
    accepted = decode_for_service(data, "ct", 10_000_000, [SOFT_TISSUE])
    assert pixel(rendered_for(accepted, SOFT_TISSUE), 10, 100) == [231] * 3
