"""Image decoding under fuzzing: real files of many kinds, mutated, through the data-loading
path (``load_rgb``, the dataset) and the service's path (``decode_rgb`` with a small pixel limit).

The property: the only exception is the documented skip, :class:`ImageProblem` with a known
kind, and a successful decode is an 8-bit RGB image within ``max_pixels``. The seed corpus,
the mutations and the property live in ``bench/fuzz_decode.py`` (``make fuzz`` runs 100,000
cases); here hypothesis draws a bounded, derandomized sample so CI stays fast and repeatable.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vitkit.data.dataset import ImageDataset
from vitkit.data.images import (
    BOMB,
    DEFAULT_MAX_PIXELS,
    TRUNCATED,
    ImageProblem,
    decode_rgb,
    load_rgb,
    reason_kind,
)
from vitkit.data.layouts import Sample
from vitkit.data.transforms import Preprocessing, eval_transform
from vitkit.data.validate import validate_samples
from vitkit.errors import DataError

DECODE_EXAMPLES = 1000  # 2-8 s here (2 shared cores); bench/fuzz_decode.py runs 100,000
FILE_EXAMPLES = 300
SERVICE_MAX_PIXELS = 1_000_000


def _bench_module() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "fuzz_decode.py"
    spec = importlib.util.spec_from_file_location("vitkit_bench_fuzz_decode", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _bench_module()
CORPUS: dict[str, bytes] = fuzz.seed_corpus()
NAMES = sorted(CORPUS)

# One mutation: (kind, where, bytes). Positions are taken modulo the length; even ones land in
# the first 256 bytes, where every format keeps its dimensions, lengths and offsets.
_mutation = st.tuples(
    st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite", "huge", "splice",
                     "png_chunk"]),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=1, max_size=8),
)
_mutations = st.lists(_mutation, max_size=3)
_limits = st.sampled_from([SERVICE_MAX_PIXELS, 2_000, DEFAULT_MAX_PIXELS])


def apply_mutations(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    """The mutations, in order, as plain byte edits hypothesis can shrink."""
    for kind, where, payload in mutations:
        if not data:
            break
        at = where % min(len(data), 256) if where % 2 == 0 else where % len(data)
        if kind == "truncate":
            data = data[:at]
        elif kind == "flip":
            data = data[:at] + bytes([data[at] ^ (1 << (payload[0] % 8))]) + data[at + 1:]
        elif kind == "insert":
            data = data[:at] + payload + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(payload):]
        elif kind == "overwrite":
            data = (data[:at] + payload + data[at + len(payload):])[:len(data)]
        elif kind == "huge":  # a dimension-sized field set to 100000 or all ones
            value = (100_000).to_bytes(4, "big" if payload[0] % 2 else "little")
            value = b"\xff" * len(payload) if payload[0] % 3 == 0 else value
            data = (data[:at] + value + data[at + len(value):])[:len(data)]
        elif kind == "splice":
            other = CORPUS[NAMES[where % len(NAMES)]]
            data = data[:at] + other[(where >> 8) % len(other):]
        elif kind == "png_chunk":
            import random

            data = fuzz._png_chunk_body(data, random.Random(where), [])
    return data


def _report(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], name: str,
            counts: collections.Counter[str], seconds: float) -> None:
    """Prints past pytest's capture (so CI logs show it) and records in the JUnit XML how many
    cases ran and how they ended."""
    total = sum(counts.values())
    line = (f"{name}: {total} cases in {seconds:.1f} s, 0 unexpected exceptions ("
            + ", ".join(f"{k} {v}" for k, v in counts.most_common()) + ")")
    request.node.user_properties.append((f"{name.replace(' ', '_')}_cases", total))
    with capsys.disabled():
        print(f"\n{line}")


@pytest.fixture(autouse=True)
def _quiet_pil() -> object:
    # Mutated files make PIL warn ("Corrupt EXIF data", "Truncated File Read"): expected noise.
    # NumPy's RuntimeWarnings (overflow, invalid cast) are bugs in our arithmetic: errors here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", RuntimeWarning)
        yield


def test_seed_corpus_has_every_kind_and_decodes() -> None:
    """The seeds are what the issue lists, and each unmutated one ends as intended."""
    for kind in ("rgb.jpg", "cmyk.jpg", "16bit.png", "palette-transparency.png",
                 "animated.gif", "multipage.tif", "exif-6.jpg", "lossy.webp", "rgb.bmp",
                 "huge.png", "huge.gif"):
        assert kind in CORPUS
    assert any(name.startswith("real-") for name in CORPUS) or not fuzz.DATASETS.exists()
    for name, data in CORPUS.items():
        outcome = fuzz.decode_property(data, DEFAULT_MAX_PIXELS)
        assert outcome == (BOMB if name.startswith("huge") else "ok"), name


def test_decode_rgb_fuzz(request: pytest.FixtureRequest,
                         capsys: pytest.CaptureFixture[str]) -> None:
    """The service's path: uploads decoded from bytes, small pixel limits included."""
    counts: collections.Counter[str] = collections.Counter()

    @settings(max_examples=DECODE_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(name=st.sampled_from(NAMES), mutations=_mutations, max_pixels=_limits)
    def run(name: str, mutations: list[tuple[str, int, bytes]], max_pixels: int) -> None:
        counts[fuzz.decode_property(apply_mutations(CORPUS[name], mutations), max_pixels)] += 1

    started = time.perf_counter()
    run()
    _report(request, capsys, "decode_rgb fuzz", counts, time.perf_counter() - started)
    assert sum(counts.values()) >= DECODE_EXAMPLES * 0.9
    assert counts["ok"] > 0 and len(counts) >= 4  # the sample reaches both sides


def test_load_rgb_fuzz_through_files(request: pytest.FixtureRequest,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The data-loading path: the same inputs as files, under right and wrong extensions."""
    counts: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:

        @settings(max_examples=FILE_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(name=st.sampled_from(NAMES), mutations=_mutations, max_pixels=_limits,
               extension=st.sampled_from(fuzz.EXTENSIONS))
        def run(name: str, mutations: list[tuple[str, int, bytes]], max_pixels: int,
                extension: str) -> None:
            path = Path(tmp) / f"case{extension}"
            path.write_bytes(apply_mutations(CORPUS[name], mutations))
            counts[fuzz.load_property(path, max_pixels)] += 1

        started = time.perf_counter()
        run()
    _report(request, capsys, "load_rgb fuzz", counts, time.perf_counter() - started)
    assert sum(counts.values()) >= FILE_EXAMPLES * 0.9


def test_validation_and_the_dataset_over_a_folder_of_mutated_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The training path end to end: validation (two decoding threads) sorts 160 mutated files
    into usable and skipped with known reasons, and the dataset turns every usable one into
    a tensor of the model's input size."""
    import random

    rng = random.Random(0)
    blobs = [CORPUS[name] for name in NAMES]
    samples = []
    for i in range(160):
        name = NAMES[i % len(NAMES)]
        path = tmp_path / "things" / f"{i:03d}{rng.choice(fuzz.EXTENSIONS)}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(fuzz.mutate(CORPUS[name], rng, blobs, rounds=rng.choice((0, 1, 2))))
        samples.append(Sample(path, "things", None))
    report = validate_samples(samples, max_pixels=SERVICE_MAX_PIXELS, progress=False, workers=2)
    assert len(report.usable) + len(report.skipped) == len(samples)
    assert {reason_kind(s.reason) for s in report.skipped} <= fuzz.KNOWN_KINDS
    assert report.usable and report.skipped
    pre = Preprocessing(input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    dataset = ImageDataset(report.usable, {"things": 0}, eval_transform(pre),
                           max_pixels=SERVICE_MAX_PIXELS)
    for i in range(len(dataset)):
        tensor, label = dataset[i]
        assert tensor.shape == (3, 32, 32) and label == 0
    with capsys.disabled():
        print(f"\nvalidation fuzz: {len(samples)} files, {len(report.usable)} usable, "
              f"{report.summary()}")


@pytest.mark.parametrize("name", ["huge.png", "huge.gif", "huge.bmp", "huge.jpg"])
@pytest.mark.parametrize("max_pixels", [SERVICE_MAX_PIXELS, DEFAULT_MAX_PIXELS])
def test_forged_huge_dimensions_are_refused_before_decoding(name: str, max_pixels: int) -> None:
    """A header declaring 100000x100000 (GIF and JPEG: their 16-bit maximum) is a bomb."""
    with pytest.raises(ImageProblem) as info:
        decode_rgb(CORPUS[name], max_pixels)
    assert info.value.kind == BOMB


def test_truncation_at_every_point_of_every_seed_is_a_skip_or_an_image() -> None:
    """Every seed cut at 24 points spread over its length (headers densely)."""
    cases = 0
    for name in NAMES:
        data = CORPUS[name]
        cuts = set(range(0, min(len(data), 64), 8)) | set(np.linspace(0, len(data) - 1, 16,
                                                                      dtype=int).tolist())
        for cut in sorted(cuts):
            fuzz.decode_property(data[:cut], SERVICE_MAX_PIXELS)
            cases += 1
    assert cases > 20 * len(NAMES)


# --- regressions: each input below broke the property before its fix -------------------------

# Offsets inside ``rich_exif(...).tobytes()`` and the byte fuzzing put there. Each makes
# ImageOps.exif_transpose fail when it re-serialises the EXIF block after turning the image.
MALFORMED_EXIF = {
    "struct.error": {41: 0},
    "AttributeError": {19: 12},
    "TypeError": {187: 1},
    "ValueError": {171: 18, 199: 16},
}


@pytest.mark.parametrize("patch", list(MALFORMED_EXIF.values()), ids=list(MALFORMED_EXIF))
def test_malformed_exif_beside_a_valid_orientation_still_turns_the_image(
        patch: dict[int, int]) -> None:
    exif = bytearray(fuzz.rich_exif(6).tobytes())
    for offset, value in patch.items():
        exif[offset] = value
    source = Image.fromarray(fuzz._noise((48, 40)))
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", exif=bytes(exif))
    image, conversions = decode_rgb(buffer.getvalue(), SERVICE_MAX_PIXELS)
    assert "exif_orientation" in conversions
    assert image.size == (40, 48)  # orientation 6: turned a quarter


@pytest.mark.parametrize("name,cut", [("rgb.bmp", 30), ("rgb.png", 20)])
def test_a_truncated_header_is_truncated_not_unreadable(name: str, cut: int) -> None:
    """PIL's ``OSError("Truncated File Read")`` is about the bytes, not about reading the
    file: it was reported as "unreadable", the kind meant for permissions and I/O errors."""
    with pytest.raises(ImageProblem) as info:
        decode_rgb(CORPUS[name][:cut])
    assert info.value.kind == TRUNCATED


def test_a_float_image_spanning_the_whole_float32_range_is_rescaled_without_overflow() -> None:
    """Before: ``values - low`` overflowed float32 (RuntimeWarning; an exception under
    ``-W error``, which some services run with)."""
    values = np.zeros((16, 16), np.float32)
    values[0, 0], values[1, 1] = -3e38, 3e38
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "TIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, conversions = decode_rgb(buffer.getvalue())
    pixels = np.asarray(image)
    assert conversions == ["mode F->RGB"]
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[1, 1].tolist() == [255, 255, 255]
    assert pixels[2, 2].tolist() == [128, 128, 128]  # 0.0 sits in the middle


def test_a_signalling_nan_in_a_float_image_becomes_black_without_a_warning() -> None:
    values = np.ones((16, 16), np.float32)
    values.view(np.uint32)[0, 0] = 0x7FA00000  # a signalling NaN: casting it warns
    values[1, 1] = 2.0
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "TIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, _ = decode_rgb(buffer.getvalue())
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[1, 1].tolist() == [255, 255, 255]


def test_unreadable_still_means_the_operating_system_refused(tmp_path: Path) -> None:
    folder_link = tmp_path / "loop"
    folder_link.symlink_to(folder_link)  # stat() fails with ELOOP
    with pytest.raises(ImageProblem) as info:
        load_rgb(folder_link)
    assert info.value.kind == "unreadable"


def test_dataset_turns_a_file_broken_after_validation_into_a_data_error(tmp_path: Path) -> None:
    """The loader's promise: a file that fuzzing would break is a DataError naming it."""
    path = tmp_path / "ants" / "a.jpg"
    path.parent.mkdir()
    path.write_bytes(CORPUS["rgb.jpg"])
    dataset = ImageDataset([Sample(path, "ants", None)], {"ants": 0}, lambda im: np.asarray(im))
    assert dataset[0][0].shape == (40, 48, 3)
    path.write_bytes(CORPUS["exif-rich.jpg"][:300])
    with pytest.raises(DataError, match="a.jpg became unusable"):
        dataset[0]
