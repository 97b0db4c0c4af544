"""`vitkit export` as a library: every runtime reproduces the torch model (CNN and ViT) on the
validation images and at other batch sizes, and the bundle records what was measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.bundle import read_meta
from vitkit.compress.export import COREML_MESSAGE, LiteRunner, staged
from vitkit.compress.reference import image_batches, reference_images
from vitkit.errors import VitkitError
from vitkit.predictor.runtimes import RuntimeMissing
from vitkit.predictor.variants import find_variant
from vitkit.workflows.export import list_exports, parse_formats, run_export

PREDICTOR_FORMATS = {"onnx": "onnx-fp32", "openvino": "openvino-fp32",
                     "torchscript": "torchscript-fp32"}
ATOL = 1e-4


@pytest.fixture(scope="module", params=["cnn", "vit"])
def exported(request: pytest.FixtureRequest, trained_bundles: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the bundle with every format exported once (shared by this module)."""
    family = request.param
    bundle = tmp_path_factory.mktemp(f"export-{family}") / "bundle"
    shutil.copytree(trained_bundles[family], bundle)
    result = run_export(bundle, ["all"], batch_size=4, progress=False)
    return bundle, result.to_dict()


def _real_batches(bundle: Path) -> list[torch.Tensor]:
    meta = read_meta(bundle)
    images = reference_images(meta)
    assert images is not None and images.samples
    return [x for x, _ in image_batches(images.samples, meta, batch_size=4)]


def test_every_format_is_exported_and_passes_its_parity_check(exported: tuple[Path, dict]
                                                             ) -> None:
    bundle, result = exported
    assert not result["skipped"] and not result["warnings"]
    by_format = {e["format"]: e for e in result["exports"]}
    assert set(by_format) == {"onnx", "openvino", "torchscript", "mobile"}
    for entry in by_format.values():
        assert (bundle / entry["file"]).is_file() and entry["size_mb"] > 0
        parity = entry["parity"]
        assert parity["ok"] and parity["max_abs_diff"] <= ATOL, entry
        assert parity["top1_agreement"] == 1.0 and parity["n_images"] > 0
        assert {1, 3} <= set(parity["batch_sizes"])
        assert "val" in parity["images"] and entry["accuracy_drop"] == 0.0
    assert by_format["onnx"]["options"]["opset"] == 18
    assert by_format["onnx"]["options"]["dynamic_batch"] is True
    assert (bundle / "variants/openvino/model.bin").is_file()
    assert not list((bundle / "variants").glob(".export-*"))  # staging folders cleaned up


@pytest.mark.parametrize("fmt", list(PREDICTOR_FORMATS))
def test_exported_variant_loads_and_matches_torch(exported: tuple[Path, dict], fmt: str
                                                  ) -> None:
    bundle, _ = exported
    name = PREDICTOR_FORMATS[fmt]
    reference = vitkit.load(bundle)
    predictor = vitkit.load(bundle, variant=name)
    assert predictor.variant.name == name
    for batch in _real_batches(bundle):
        torch.testing.assert_close(predictor(batch), reference(batch), atol=ATOL, rtol=1e-4)
    size = reference.preprocessing.input_size
    for n in (1, 5):  # dynamic batch
        x = torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(n))
        got = predictor(x)
        assert got.shape == (n, len(reference.labels)) and got.dtype == torch.float32
        torch.testing.assert_close(got, reference(x), atol=ATOL, rtol=1e-4)
    variant = find_variant(read_meta(bundle), name)
    assert variant.precision == "fp32" and variant.parity and variant.parity["ok"]
    assert variant.parity["max_abs_diff"] <= ATOL and variant.accuracy is not None
    assert variant.options["dynamic_batch"] is True
    assert variant.options["preprocessing"] == "variants/preprocessing.json"


def test_mobile_file_loads_in_the_lite_interpreter_and_matches(exported: tuple[Path, dict]
                                                               ) -> None:
    bundle, _ = exported
    meta = read_meta(bundle)
    (entry,) = [e for e in list_exports(meta) if e["name"] == "mobile-fp32"]
    assert entry["runtime"] == "torchscript-lite" and entry["parity"]["ok"]
    assert "mobile-fp32" not in {v["name"] for v in meta.variants}  # not a server variant
    lite = LiteRunner(bundle / entry["file"])
    reference = vitkit.load(bundle)
    for batch in [*_real_batches(bundle), torch.randn(1, 3, *reference.preprocessing.input_size)]:
        torch.testing.assert_close(lite(batch), reference(batch), atol=ATOL, rtol=1e-4)


def test_preprocessing_and_labels_are_stored_beside_the_files(exported: tuple[Path, dict]
                                                              ) -> None:
    bundle, _ = exported
    meta = read_meta(bundle)
    stored = json.loads((bundle / "variants/preprocessing.json").read_text())
    assert stored["labels"] == meta.labels
    assert stored["preprocessing"] == meta.preprocessing
    assert stored["input"]["shape"] == ["batch", 3, *meta.preprocessing["input_size"]]
    assert stored["input"]["name"] == "input" and stored["output"]["name"] == "logits"


def test_a_parity_failure_is_stored_with_a_loud_warning(
        trained_bundles: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from vitkit.compress import export as ex

    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundles["vit"], bundle)
    real = ex.export_torchscript

    def perturbed(model: torch.nn.Module, path: Path, size: tuple[int, ...]) -> dict:
        wrapped = torch.nn.Sequential(model, _Scale(1.5)).eval()
        return real(wrapped, path, size)

    monkeypatch.setattr(ex, "export_torchscript", perturbed)
    result = run_export(bundle, ["torchscript"], progress=False)
    (record,) = result.exports
    assert record.warning and "parity check FAILED" in record.warning
    assert result.to_dict()["warnings"]
    variant = find_variant(read_meta(bundle), "torchscript-fp32")
    assert variant.parity and variant.parity["ok"] is False
    assert "FAILED" in variant.parity["warning"]


class _Scale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_missing_runtimes_are_skipped_with_the_extra_to_install(
        trained_bundles: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from vitkit.compress import export as ex

    def missing(*_args: object, **_kwargs: object) -> dict:
        raise RuntimeMissing("openvino is not installed; pip install 'vitkit[openvino]' "
                             "to use it.")

    monkeypatch.setattr(ex, "export_openvino", missing)
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundles["vit"], bundle)
    result = run_export(bundle, ["openvino,torchscript"], progress=False).to_dict()
    assert [e["name"] for e in result["exports"]] == ["torchscript-fp32"]
    assert "vitkit[openvino]" in result["skipped"][0]["reason"]
    with pytest.raises(VitkitError, match=r"no format could be exported.*vitkit\[openvino\]"):
        run_export(bundle, ["openvino"], progress=False)


def test_format_names_and_unsupported_targets_give_clear_errors(
        trained_bundles: dict[str, Path]) -> None:
    assert parse_formats(["all"]) == ["onnx", "openvino", "torchscript", "mobile"]
    assert parse_formats(["onnx, torchscript", "onnx"]) == ["onnx", "torchscript"]
    with pytest.raises(VitkitError, match="unknown export format 'pt2'"):
        parse_formats(["pt2"])
    with pytest.raises(VitkitError, match="only runs on macOS") as coreml:
        run_export(trained_bundles["cnn"], ["coreml"], progress=False)
    assert str(coreml.value) == COREML_MESSAGE


def test_tflite_without_litert_torch_says_what_to_install(
        trained_bundles: dict[str, Path], tmp_path: Path) -> None:
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("litert-torch is installed here")
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundles["vit"], bundle)
    with pytest.raises(VitkitError, match="pip install litert-torch"):
        run_export(bundle, ["tflite"], progress=False)


def test_staged_writes_leave_the_folder_untouched_on_failure(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_text("old")
    with pytest.raises(RuntimeError), staged(tmp_path) as staging:
        (staging / "model.onnx").write_text("half")
        raise RuntimeError("converter crashed")
    assert (tmp_path / "model.onnx").read_text() == "old"
    with staged(tmp_path) as staging:
        (staging / "model.onnx").write_text("new")
    assert (tmp_path / "model.onnx").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_hugging_face_models_export_to_every_runtime(tiny_hf_folder: Path, tmp_path: Path
                                                     ) -> None:
    """A (tiny) Hugging Face ViT through each exporter, OpenVINO from its PyTorch frontend."""
    from vitkit.backbones import create
    from vitkit.compress import export as ex
    from vitkit.predictor.runtimes import OnnxRuntime, OpenVinoRuntime, TorchScriptRuntime

    model = create(str(tiny_hf_folder), num_classes=3, weights="auto").model.eval()
    size = (32, 32)
    x = torch.randn(5, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    assert ex.export_onnx(model, tmp_path / "m.onnx", size)["exporter"] == "dynamo"
    assert ex.export_openvino(model, tmp_path / "m.xml", size)["frontend"] == "pytorch"
    ex.export_torchscript(model, tmp_path / "m.pt", size)
    ex.export_mobile(model, tmp_path / "m.ptl", size)
    runners = [OnnxRuntime(tmp_path / "m.onnx"), OpenVinoRuntime(tmp_path / "m.xml"),
               TorchScriptRuntime(tmp_path / "m.pt"), LiteRunner(tmp_path / "m.ptl")]
    for runner in runners:
        for batch in (x[:1], x):
            torch.testing.assert_close(runner(batch), expected[: len(batch)], atol=ATOL,
                                       rtol=1e-4)
