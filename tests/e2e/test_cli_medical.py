"""`vitkit train --window ... --clahe ...` on CT files written with pydicom, and every later
path reading the recorded spec: eval and predict (CLI), an ONNX export, the service.

Two classes of 40x40 slices differ only by the density of a disk in air (0 vs 120 HU); a
few files have no extension (as scanners write them) and one is broken. The expected
predictions are computed from a by-hand rendering: the window formula in numpy and OpenCV's
CLAHE called directly, fed to the bundle's model.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from tests.dicom_files import disk_phantom, write_ct
from tests.e2e.cli import run_cli
from tests.serve.test_serve_http import wait_ready

from vitkit.predictor.predict import Prediction, load

WINDOWS = [(40.0, 400.0), (-600.0, 1500.0)]
CLASSES = {"fluid": 0.0, "tissue": 120.0}


def json_of(result: Any) -> Any:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    work = tmp_path_factory.mktemp("medical")
    data = work / "data"
    for k, (label, hu) in enumerate(CLASSES.items()):
        for i in range(8):
            name = f"{label}_{i}.dcm" if i % 2 else f"IM{i:04d}"
            write_ct(data / label / name, disk_phantom(hu, seed=100 * k + i))
    (data / "fluid" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
    result = json_of(run_cli("train", data, "--model", "test_resnet", "--weights", "none",
                             "--epochs", 2, "--window", "soft-tissue", "--window", "-600:1500",
                             "--clahe", "2.0:8", "--out", work / "run", "--json", "--quiet",
                             cwd=work))
    return data, Path(work / "run" / "bundle"), result


def rendered_by_hand(path: Path) -> Image.Image:
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    soft, lung = (np.clip((hu - (level - width / 2)) / width, 0, 1) for level, width in WINDOWS)
    pixels = np.rint(np.stack([soft, lung, (soft + lung) / 2], axis=-1) * 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    return Image.fromarray(np.stack([clahe.apply(np.ascontiguousarray(pixels[..., c]))
                                     for c in range(3)], axis=-1))


def expected_scores(bundle: Path, path: Path) -> dict[str, float]:
    predictor = load(bundle)
    probs = predictor.predict_proba(predictor.transform(rendered_by_hand(path))[None])[0]
    return {label: float(p) for label, p in zip(predictor.labels, probs, strict=True)}


@pytest.mark.slow
def test_train_records_the_window_and_eval_and_predict_read_dicom_through_it(
        ct_run: tuple[Path, Path, dict[str, Any]]) -> None:
    data, bundle, trained = ct_run
    assert trained["skipped"] == 1  # broken.dcm, reported in OUT/skipped.csv
    assert trained["train_images"] + trained["val_images"] == 16
    meta = json.loads((bundle / "vitkit.json").read_text())
    assert meta["intensity"] == {"windows": [[40.0, 400.0], [-600.0, 1500.0]],
                                 "clahe": {"clip": 2.0, "tiles": 8}}
    assert meta["train"]["config"]["intensity"] == meta["intensity"]

    with ThreadPoolExecutor(2) as pool:  # two independent commands: half the waiting
        evaluating = pool.submit(run_cli, "eval", bundle, data, "--json", "--quiet")
        predicting = pool.submit(run_cli, "predict", bundle, data / "fluid", "--json",
                                 "--quiet")
        evaluated, predicted = json_of(evaluating.result()), json_of(predicting.result())
    assert evaluated["n"] == 16 and evaluated["n_skipped"] == 1
    assert evaluated["skipped"][0]["path"].endswith("broken.dcm")

    by_name = {Path(row["path"]).name: row for row in predicted}
    assert set(by_name) == {"IM0000", "fluid_1.dcm", "IM0002", "fluid_3.dcm", "IM0004",
                            "fluid_5.dcm", "IM0006", "fluid_7.dcm", "broken.dcm"}
    assert by_name["broken.dcm"]["error"].startswith("no pixel data")
    for name in ("IM0000", "fluid_1.dcm"):
        scores = {t["label"]: t["score"] for t in by_name[name]["topk"]}
        expected = expected_scores(bundle, data / "fluid" / name)
        assert scores == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_an_onnx_export_and_the_service_read_dicom_through_the_recorded_window(
        ct_run: tuple[Path, Path, dict[str, Any]]) -> None:
    pytest.importorskip("onnxruntime")
    httpx = pytest.importorskip("httpx")
    from vitkit.serve.config import ServeConfig
    from vitkit.serve.server import BackgroundServer
    from vitkit.workflows.export import run_export

    data, bundle, _ = ct_run
    scan = data / "tissue" / "tissue_3.dcm"
    expected = expected_scores(bundle, scan)

    exported = run_export(bundle, ["onnx"], progress=False)
    assert [r.format for r in exported.succeeded] == ["onnx"]
    assert exported.succeeded[0].parity["n_images"] >= 3  # the validation DICOMs, windowed
    (onnx_result,) = load(bundle, variant="onnx-fp32").predict_paths([scan])
    assert isinstance(onnx_result, Prediction)
    assert {t["label"]: t["score"] for t in onnx_result.topk} == pytest.approx(expected,
                                                                              abs=1e-4)

    config = ServeConfig.model_validate({"models": [{"name": "ct", "bundle": str(bundle),
                                                     "variant": "torch-fp32"}],
                                         "log": {"url": None}, "state_file": None})
    with BackgroundServer(config) as url:
        wait_ready(url, timeout=120)
        answer = httpx.post(f"{url}/v1/predict", timeout=60,
                            files=[("files", ("slice.dcm", scan.read_bytes(),
                                              "application/dicom"))])
        assert answer.status_code == 200, answer.text
        (served,) = answer.json()["predictions"]
        assert {t["label"]: t["score"] for t in served["topk"]} == pytest.approx(expected,
                                                                                abs=1e-5)
        colour = np.zeros((16, 16, 3), np.uint8)
        colour[..., 0] = 200
        buffer = io.BytesIO()
        Image.fromarray(colour).save(buffer, format="PNG")
        refused = httpx.post(f"{url}/v1/predict", timeout=60, content=buffer.getvalue(),
                             headers={"content-type": "image/png"})
        assert refused.status_code == 422 and "colour image" in refused.json()["detail"]
