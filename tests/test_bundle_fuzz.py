"""Damaged and hostile bundles: truncated safetensors files, an edited ``vitkit.json`` (wrong
shapes, wrong types, missing keys, unknown schema versions) and file entries that point out of
the bundle folder. Each must end in a :class:`BundleError` that names the file and the fix (the
CLI prints it and exits 2), never a raw traceback, a KeyError, or a file opened outside the
bundle (for a TorchScript variant that would be code from anywhere, executed)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.anomaly.config import AnomalyFitConfig
from vitkit.anomaly.detector import load_anomaly_detector as load_anomaly
from vitkit.bundle import META_FILE, WEIGHTS_FILE, read_meta
from vitkit.errors import BundleError, VitkitError
from vitkit.ood.detector import load_ood_detector as load_ood
from vitkit.predictor.variants import Variant, record_variant
from vitkit.workflows.anomaly import run_fit

Edit = Callable[[dict[str, Any]], Any]
FIX_WORDS = ("Restore", "again", "Upgrade")  # every message says how to get a good bundle


def edit_meta(bundle: Path, change: Edit) -> None:
    meta = json.loads((bundle / META_FILE).read_text())
    result = change(meta)
    (bundle / META_FILE).write_text(json.dumps(meta if result is None else result))


def load_and_predict(bundle: Path, image: Path) -> None:
    """What `vitkit predict` does: load (OOD included) and predict one image."""
    predictor = vitkit.load(bundle)
    list(predictor.predict_paths([image]))


def assert_clear(error: pytest.ExceptionInfo[BaseException], *names: str) -> None:
    """A BundleError whose message names the file(s) and says how to fix it."""
    assert isinstance(error.value, BundleError), repr(error.value)
    message = str(error.value)
    for name in names:
        assert name in message, message
    assert any(word in message for word in FIX_WORDS), message
    assert "Traceback" not in message


@pytest.fixture(scope="module")
def image(tiny_image_folder: Path) -> Path:
    return next(tiny_image_folder.rglob("*.png"))


# --- truncated weights and tensor files ------------------------------------------------------

@pytest.mark.parametrize("filename", [WEIGHTS_FILE, "ood.safetensors"])
def test_truncated_safetensors_at_many_points_is_a_clear_error(
        fresh_bundle: Callable[[str], Path], image: Path, filename: str) -> None:
    bundle = fresh_bundle("cnn")
    whole = (bundle / filename).read_bytes()
    cuts = sorted({0, 1, 7, 8, 9, 64, 200, len(whole) // 100, len(whole) // 2, len(whole) - 1})
    for cut in cuts:
        (bundle / filename).write_bytes(whole[:cut])
        with pytest.raises(BundleError) as error:
            load_and_predict(bundle, image)
        assert_clear(error, str(bundle / filename), "damaged or truncated")
    (bundle / filename).write_bytes(whole)
    load_and_predict(bundle, image)  # and the intact file still loads


def test_a_safetensors_header_of_garbage_is_a_clear_error(
        fresh_bundle: Callable[[str], Path], image: Path) -> None:
    bundle = fresh_bundle("vit")
    (bundle / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!}")
    with pytest.raises(BundleError) as error:
        load_and_predict(bundle, image)
    assert_clear(error, WEIGHTS_FILE, "damaged or truncated")


# --- an edited vitkit.json ---------------------------------------------------------------------

def _set(*keys: str, value: Any = None, delete: bool = False) -> Edit:
    def change(meta: dict[str, Any]) -> None:
        node = meta
        for key in keys[:-1]:
            node = node[key]
        if delete:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return change


# name -> (edit, a phrase the message must hold). Each failed before with something other
# than a BundleError (KeyError, ValidationError, AttributeError, RuntimeError, ValueError) or
# was accepted silently (schema versions 0, -1 and true; repeated labels).
EDITED_META: dict[str, tuple[Edit, str]] = {
    "labels: more than the weights": (_set("labels", value=list("abcde")),
                                      "do not match the recorded architecture"),
    "labels: repeated": (_set("labels", value=["a", "a", "b"]), "labels must be distinct"),
    "labels: empty": (_set("labels", value=[]), "lists no labels"),
    "labels: a string": (_set("labels", value="abc"), "labels"),
    "labels: missing": (_set("labels", delete=True), "labels: Field required"),
    "backbone: unknown model": (_set("backbone", "name", value="no_such_model"),
                                "cannot be built"),
    "backbone: name missing": (_set("backbone", "name", delete=True), "cannot be built"),
    "backbone: source missing": (_set("backbone", "source", delete=True), "cannot be built"),
    "backbone: name a number": (_set("backbone", "name", value=5), "cannot be built"),
    "backbone: odd timm kwargs": (_set("backbone", "timm_kwargs", value={"depth": 99}),
                                  "cannot be built"),
    "backbone: a string": (_set("backbone", value="test_resnet"), "backbone"),
    "preprocessing: size a string": (_set("preprocessing", "input_size", value="big"),
                                     "input_size"),
    "preprocessing: size 0": (_set("preprocessing", "input_size", value=[0, 0]), "input_size"),
    "preprocessing: a side over 4096": (_set("preprocessing", "input_size",
                                             value=[4097, 16]), "input_size"),
    "preprocessing: one mean": (_set("preprocessing", "mean", value=[0.5]), "mean"),
    "preprocessing: std 0": (_set("preprocessing", "std", value=[0, 0, 0]), "divides by zero"),
    "preprocessing: unknown interpolation": (_set("preprocessing", "interpolation",
                                                  value="magic"), "interpolation"),
    "preprocessing: missing": (_set("preprocessing", delete=True), "preprocessing"),
    "schema_version: 0": (_set("schema_version", value=0), "schema version 0"),
    "schema_version: -1": (_set("schema_version", value=-1), "schema version -1"),
    "schema_version: true": (_set("schema_version", value=True), "schema version True"),
    "schema_version: a string": (_set("schema_version", value="1"), "schema version '1'"),
    "schema_version: 1.5": (_set("schema_version", value=1.5), "schema version 1.5"),
    "schema_version: missing": (_set("schema_version", delete=True), "schema version None"),
    "task: a number": (_set("task", value=5), "task"),
    "top level: a list": (lambda meta: [meta], "not an object"),
    "top level: null": (lambda meta: None, "not an object"),  # written as `null` below
    "variant: no name": (_set("variants", value=[{"runtime": "torch", "precision": "fp32"}]),
                         "variants[0]"),
    "variant: unknown runtime": (_set("variants", value=[
        {"name": "x", "runtime": "tensorflow", "precision": "fp32"}]), "variants[0]"),
    "calibration: a word": (_set("calibration", value={"temperature": "hot"}),
                            "calibration.temperature"),
    "calibration: a list": (_set("calibration", value=[1]), "calibration.temperature"),
    "ood: a string": (_set("ood", value="x"), "'ood'"),
    "ood: threshold missing": (_set("ood", "threshold", delete=True), "'ood' record"),
    "ood: threshold a word": (_set("ood", "threshold", value="high"), "'ood' record"),
}


@pytest.mark.parametrize("case", list(EDITED_META), ids=list(EDITED_META))
def test_an_edited_vitkit_json_is_a_clear_error(case: str, fresh_bundle: Callable[[str], Path],
                                                image: Path) -> None:
    bundle = fresh_bundle("cnn")
    change, phrase = EDITED_META[case]
    if case == "top level: null":
        (bundle / META_FILE).write_text("null")
    else:
        edit_meta(bundle, change)
    with pytest.raises(BundleError) as error:
        load_and_predict(bundle, image)
    assert_clear(error, str(bundle))
    assert phrase in str(error.value)


def test_a_newer_schema_version_asks_for_an_upgrade(fresh_bundle: Callable[[str], Path]
                                                    ) -> None:
    bundle = fresh_bundle("cnn")
    edit_meta(bundle, _set("schema_version", value=2))
    with pytest.raises(BundleError) as error:
        vitkit.load(bundle)
    assert_clear(error, "schema version 2", "pip install -U vitkit")


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage", b'{"schema_version": 1',
                                     b'{"schema_version": 1, "x": NaN}'])
def test_vitkit_json_that_is_not_json_is_a_clear_error(
        content: bytes, fresh_bundle: Callable[[str], Path]) -> None:
    bundle = fresh_bundle("cnn")
    (bundle / META_FILE).write_bytes(content)
    with pytest.raises(BundleError) as error:
        vitkit.load(bundle)
    assert_clear(error, str(bundle / META_FILE), "not valid JSON")


_ODD_VALUES = st.sampled_from([None, 0, -1, 1.5, True, "x", "", [], [1], {}, {"a": 1},
                               10**12, ["a", "b"]])


def test_vitkit_json_fuzz_never_escapes_as_another_exception(
        fresh_bundle: Callable[[str], Path], image: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Random keys of a real vitkit.json (nested ones too) replaced by values of the wrong
    type or deleted: loading and predicting either works or raises a VitkitError."""
    bundle = fresh_bundle("cnn")
    original = json.loads((bundle / META_FILE).read_text())
    paths = list(_key_paths(original))
    outcomes: dict[str, int] = {}

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(which=st.sampled_from(paths), value=_ODD_VALUES, delete=st.booleans())
    def run(which: tuple[Any, ...], value: Any, delete: bool) -> None:
        meta = copy.deepcopy(original)
        node = meta
        for key in which[:-1]:
            node = node[key]
        if delete and isinstance(node, dict):
            del node[which[-1]]
        else:
            node[which[-1]] = value
        (bundle / META_FILE).write_text(json.dumps(meta))
        try:
            load_and_predict(bundle, image)
            outcome = "ok"
        except VitkitError as error:
            outcome = type(error).__name__
            assert str(bundle) in str(error) or "variant" in str(error), str(error)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    run()
    with capsys.disabled():
        print(f"\nvitkit.json fuzz: {sum(outcomes.values())} cases, {outcomes}")
    assert sum(outcomes.values()) >= 50


def _key_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Any:
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        if prefix[:1] == ("train",):
            continue  # the training record is kept for people, nothing reads it back
        yield (*prefix, key)
        yield from _key_paths(value, (*prefix, key))


# --- file entries confined to the bundle folder ------------------------------------------------

class _Logits(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _torchscript(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch deprecates torch.jit; vitkit export still writes it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(_Logits()).save(str(path))
    return path


@pytest.fixture
def jit_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path torch.jit.load is asked to open."""
    calls: list[str] = []
    real = torch.jit.load

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", spy)
    return calls


def _point_variant(bundle: Path, file: str, runtime: str = "torchscript") -> None:
    def change(meta: dict[str, Any]) -> None:
        meta["variants"] = [{"name": "evil", "runtime": runtime, "precision": "fp32",
                             "file": file}]
        meta["default_variant"] = "evil"
    edit_meta(bundle, change)


def test_a_torchscript_variant_inside_the_bundle_loads(
        fresh_bundle: Callable[[str], Path], jit_loads: list[str]) -> None:
    """Confinement does not refuse what vitkit writes, nor a symlink that stays inside."""
    bundle = fresh_bundle("cnn")
    _torchscript(bundle / "variants" / "model.pt")
    os.symlink("model.pt", bundle / "variants" / "alias.pt")
    for file in ("variants/model.pt", "variants/alias.pt", "variants/../variants/model.pt"):
        record_variant(bundle, Variant(name="ts", runtime="torchscript", precision="fp32",
                                       file=file))
        predictor = vitkit.load(bundle, variant="ts")
        assert predictor(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
    assert len(jit_loads) == 3


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked folder", "empty",
                                 "dot", "nul"])
def test_a_variant_file_outside_the_bundle_is_never_opened(
        how: str, fresh_bundle: Callable[[str], Path], tmp_path: Path,
        jit_loads: list[str]) -> None:
    """Before the fix each of these ran ``torch.jit.load`` on a file outside the bundle: a
    crafted bundle could execute any TorchScript the process can read."""
    bundle = fresh_bundle("cnn")
    outside = _torchscript(tmp_path / "elsewhere" / "payload.pt")
    file = {"dotdot": os.path.relpath(outside, bundle), "absolute": str(outside),
            "symlink": "variants/model.pt", "symlinked folder": "linked/payload.pt",
            "empty": "", "dot": ".", "nul": "variants/a\x00b.pt"}[how]
    if how == "symlink":
        (bundle / "variants").mkdir()
        os.symlink(outside, bundle / "variants" / "model.pt")
    if how == "symlinked folder":
        os.symlink(outside.parent, bundle / "linked")
    _point_variant(bundle, file)
    with pytest.raises(BundleError) as error:
        vitkit.load(bundle)
    assert_clear(error, str(bundle / META_FILE), "variant evil")
    assert not jit_loads


def test_an_onnx_variant_outside_the_bundle_is_refused(
        fresh_bundle: Callable[[str], Path], tmp_path: Path) -> None:
    bundle = fresh_bundle("cnn")
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    _point_variant(bundle, str(tmp_path / "x.onnx"), runtime="onnxruntime")
    with pytest.raises(BundleError, match="absolute path"):
        vitkit.load(bundle)


@pytest.mark.parametrize("runtime,name", [("torchscript", "model.pt"),
                                          ("onnxruntime", "model.onnx")])
def test_a_damaged_variant_file_is_a_clear_error(runtime: str, name: str,
                                                 fresh_bundle: Callable[[str], Path]) -> None:
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
    bundle = fresh_bundle("cnn")
    (bundle / "variants").mkdir()
    (bundle / "variants" / name).write_bytes(b"garbage, not a model")
    _point_variant(bundle, f"variants/{name}", runtime)
    with pytest.raises(BundleError) as error:
        vitkit.load(bundle)
    assert_clear(error, f"variants/{name}", f"{runtime} cannot load")


def test_a_missing_variant_file_is_a_clear_error(fresh_bundle: Callable[[str], Path]) -> None:
    bundle = fresh_bundle("cnn")
    _point_variant(bundle, "variants/never-written.pt")
    with pytest.raises(BundleError, match="never-written.pt of variant evil is missing"):
        vitkit.load(bundle)


@pytest.mark.parametrize("file", ["../vit-bundle/ood.safetensors", "/etc/hostname", "5"])
def test_the_ood_file_entry_stays_inside_the_bundle(
        file: str, fresh_bundle: Callable[[str], Path]) -> None:
    bundle = fresh_bundle("cnn")
    fresh_bundle("vit")  # a real ood.safetensors right beside it
    edit_meta(bundle, _set("ood", "file", value=file))
    with pytest.raises(BundleError) as error:
        load_ood(bundle)
    if file != "5":
        assert_clear(error, str(bundle / META_FILE), repr(file))


# --- anomaly bundles ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def anomaly_bundles(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[str, Path]:
    """A PaDiM bundle on test_resnet (random weights) and a patchmean one, both fitted on one
    class of the tiny folder (read-only: tests copy them)."""
    root = tmp_path_factory.mktemp("anomaly-bundles")
    normal = next(p for p in sorted(tiny_image_folder.iterdir()) if p.is_dir())
    bundles = {}
    for method in ("padim", "patchmean"):
        extra = {"patch_size": 12} if method == "patchmean" else {}
        config = AnomalyFitConfig(data=str(normal), method=method,  # type: ignore[arg-type]
                                  model="test_resnet", weights="none", out=str(root / method),
                                  holdout=0.3, batch_size=8, **extra)  # type: ignore[arg-type]
        run_fit(config, progress=False)
        bundles[method] = root / method
    return bundles


def _shrink_tensors(bundle: Path) -> None:
    tensors = load_file(str(bundle / "anomaly.safetensors"))
    save_file({k: v.flatten()[:3].clone() for k, v in tensors.items()},
              str(bundle / "anomaly.safetensors"))


def _drop_a_tensor(bundle: Path) -> None:
    tensors = load_file(str(bundle / "anomaly.safetensors"))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(bundle / "anomaly.safetensors"))


def _truncate(bundle: Path) -> None:
    data = (bundle / "anomaly.safetensors").read_bytes()
    (bundle / "anomaly.safetensors").write_bytes(data[:len(data) // 2])


def _anomaly_variant(file: str) -> Callable[[Path], None]:
    def change(bundle: Path) -> None:
        def edit(meta: dict[str, Any]) -> None:
            meta["anomaly"]["variants"] = [{"name": "evil", "runtime": "onnxruntime",
                                            "precision": "fp32", "file": file}]
            meta["anomaly"]["default_variant"] = "evil"
        edit_meta(bundle, edit)
    return change


def _anomaly_edit(*keys: str, value: Any = None, delete: bool = False) -> Callable[[Path], None]:
    return lambda bundle: edit_meta(bundle, _set("anomaly", *keys, value=value, delete=delete))


# name -> (methods it applies to, damage, phrase). Before: ValueError, KeyError, TypeError,
# AssertionError or RuntimeError from inside the method, some only at the first image scored.
ANOMALY_DAMAGE: dict[str, tuple[tuple[str, ...], Callable[[Path], None], str]] = {
    "tensors of the wrong shape": (("padim", "patchmean"), _shrink_tensors, "cannot be restored"),
    "a tensor missing": (("padim", "patchmean"), _drop_a_tensor, "cannot be restored"),
    "truncated tensors": (("padim", "patchmean"), _truncate, "damaged or truncated"),
    "record a string": (("padim", "patchmean"),
                        lambda b: edit_meta(b, _set("anomaly", value="x")), "'anomaly'"),
    "options empty": (("padim", "patchmean"), _anomaly_edit("options", value={}),
                      "cannot be restored"),
    "layers missing": (("padim",), _anomaly_edit("layers", delete=True), "cannot be restored"),
    "layers out of range": (("padim",), _anomaly_edit("layers", value=[1, 2, 99]),
                            "cannot be restored"),
    "unknown method": (("padim",), _anomaly_edit("method", value="magic"), "cannot be restored"),
    "variants a string": (("padim",), _anomaly_edit("variants", value="x"),
                          "cannot be restored"),
    "variant outside": (("padim",), _anomaly_variant("../../x.onnx"), "outside the bundle"),
    "variant absolute": (("padim",), _anomaly_variant("/etc/hostname"), "absolute path"),
}


@pytest.mark.parametrize("case,method", [(case, method) for case, (methods, _, _)
                                         in ANOMALY_DAMAGE.items() for method in methods])
def test_a_damaged_anomaly_bundle_is_a_clear_error_at_load(
        case: str, method: str, anomaly_bundles: dict[str, Path], tmp_path: Path) -> None:
    _, damage, phrase = ANOMALY_DAMAGE[case]
    bundle = tmp_path / method
    shutil.copytree(anomaly_bundles[method], bundle)
    load_anomaly(bundle, "cpu")  # intact: loads
    damage(bundle)
    with pytest.raises(BundleError) as error:
        load_anomaly(bundle, "cpu")
    assert_clear(error, str(bundle))
    assert phrase in str(error.value)


def test_read_meta_of_a_good_bundle_is_unchanged(trained_bundles: dict[str, Path]) -> None:
    for bundle in trained_bundles.values():
        meta = read_meta(bundle)
        assert meta.schema_version == 1 and len(set(meta.labels)) == len(meta.labels)
