"""Bundles: save, read and load a model folder (vitkit.json + model.safetensors, no pickle)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit import bundle as bundle_module
from vitkit.backbones import CreatedModel, create
from vitkit.bundle import (
    META_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    BundleMeta,
    read_meta,
    save_bundle,
    update_meta,
)
from vitkit.data import eval_transform, load_rgb
from vitkit.errors import BundleError, VitkitError
from vitkit.predictor.predict import Prediction, PredictionError, expand_paths, load

LABELS = ["blue", "green", "red"]


def _created(name: str = "test_resnet", seed: int = 0, num_classes: int = 3) -> CreatedModel:
    torch.manual_seed(seed)
    created = create(name, num_classes=num_classes, weights="none")
    created.model.eval()
    return created


def _meta(created: CreatedModel, labels: list[str] = LABELS, **extra: object) -> BundleMeta:
    return BundleMeta(
        backbone=created.spec.to_dict(),
        labels=labels,
        preprocessing=created.preprocessing.model_dump(mode="json"),
        train={"epochs_run": 3},
        **extra,
    )


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float rounding: the Predictor runs CNNs channels-last, which reorders sums."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def _batch(created: CreatedModel, n: int = 4, seed: int = 0) -> torch.Tensor:
    height, width = created.preprocessing.input_size
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CreatedModel]:
    created = _created()
    path = save_bundle(tmp_path_factory.mktemp("bundle") / "model", created.model.model,
                       _meta(created))
    return path, created


def test_round_trip_gives_identical_logits(saved: tuple[Path, CreatedModel]) -> None:
    path, created = saved
    predictor = load(path)
    x = _batch(created)
    with torch.no_grad():
        expected = created.model(x)
    assert_same_logits(predictor(x), expected)
    assert predictor.labels == LABELS
    assert predictor.preprocessing == created.preprocessing
    assert not predictor.model.training


def test_meta_is_recorded(saved: tuple[Path, CreatedModel]) -> None:
    path, created = saved
    meta = read_meta(path)
    assert meta.schema_version == SCHEMA_VERSION
    assert meta.task == "classify"
    assert meta.vitkit_version == vitkit.__version__
    assert meta.backbone == {"name": "test_resnet", "source": "timm", "weights": "none"}
    assert meta.labels == LABELS
    assert meta.train == {"epochs_run": 3}
    raw = json.loads((path / META_FILE).read_text())
    assert raw["labels"] == LABELS


def test_bundle_holds_only_json_and_safetensors(saved: tuple[Path, CreatedModel]) -> None:
    path, created = saved
    assert sorted(p.name for p in path.iterdir()) == [WEIGHTS_FILE, META_FILE]
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no staging leftovers"
    tensors = load_file(str(path / WEIGHTS_FILE))  # plain safetensors, readable without vitkit
    state = created.model.model.state_dict()
    assert tensors.keys() == state.keys()
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    raw = (path / WEIGHTS_FILE).read_bytes()  # safetensors: u64 header size + JSON header
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert set(header) - {"__metadata__"} == set(state)


def _copy(saved: tuple[Path, CreatedModel], tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(saved[0], target)
    return target


def _edit_meta(path: Path, **changes: object) -> None:
    raw = json.loads((path / META_FILE).read_text())
    raw.update(changes)
    (path / META_FILE).write_text(json.dumps(raw))


def test_newer_schema_version_asks_for_an_upgrade(saved: tuple[Path, CreatedModel],
                                                   tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    _edit_meta(path, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(BundleError, match="Upgrade vitkit"):
        read_meta(path)
    with pytest.raises(BundleError, match="Upgrade"):
        load(path)


def test_missing_schema_version_is_refused(saved: tuple[Path, CreatedModel],
                                           tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    raw = json.loads((path / META_FILE).read_text())
    del raw["schema_version"]
    (path / META_FILE).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema version None"):
        read_meta(path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_folder_without_meta(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=f"has no {META_FILE}"):
        load(tmp_path / "empty")


def test_missing_weights(saved: tuple[Path, CreatedModel], tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    (path / WEIGHTS_FILE).unlink()
    read_meta(path)  # the metadata alone is fine
    with pytest.raises(BundleError, match=f"has no {WEIGHTS_FILE}"):
        load(path)


def test_damaged_json(saved: tuple[Path, CreatedModel], tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    text = (path / META_FILE).read_text()
    (path / META_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(BundleError, match="not valid JSON"):
        load(path)


def test_incomplete_json(saved: tuple[Path, CreatedModel], tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    raw = json.loads((path / META_FILE).read_text())
    del raw["labels"]
    (path / META_FILE).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="incomplete or damaged"):
        load(path)


def test_weights_of_another_architecture(saved: tuple[Path, CreatedModel],
                                         tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    other = _created("test_efficientnet")
    save_bundle(tmp_path / "other", other.model.model, _meta(other))
    shutil.copy(tmp_path / "other" / WEIGHTS_FILE, path / WEIGHTS_FILE)
    with pytest.raises(BundleError, match="do not match the recorded architecture"):
        load(path)


def test_other_task_is_not_loaded_as_classifier(saved: tuple[Path, CreatedModel],
                                                tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    _edit_meta(path, task="detect")
    with pytest.raises(VitkitError, match="not a classifier"):
        load(path)


def test_unknown_keys_survive_reads_and_updates(saved: tuple[Path, CreatedModel],
                                                tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    _edit_meta(path, future_section={"threshold": 0.5})
    meta = update_meta(path, train={"epochs_run": 4})
    assert meta.train == {"epochs_run": 4}
    raw = json.loads((path / META_FILE).read_text())
    assert raw["future_section"] == {"threshold": 0.5}
    assert raw["train"] == {"epochs_run": 4}
    assert [p.name for p in path.iterdir() if p.name.startswith(".")] == []
    load(path)


def test_saving_over_a_bundle_replaces_it(tmp_path: Path) -> None:
    first, second = _created(seed=1), _created(seed=2)
    path = tmp_path / "model"
    save_bundle(path, first.model.model, _meta(first))
    save_bundle(path, second.model.model, _meta(second, labels=["a", "b", "c"]))
    x = _batch(first)
    with torch.no_grad():
        expected = second.model(x)
    predictor = load(path)
    assert predictor.labels == ["a", "b", "c"]
    assert_same_logits(predictor(x), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no temp or backup folders left"
    assert sorted(p.name for p in path.iterdir()) == [WEIGHTS_FILE, META_FILE]


def test_a_failed_save_keeps_the_old_bundle(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _created(seed=1), _created(seed=2)
    path = tmp_path / "model"
    save_bundle(path, first.model.model, _meta(first))
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def half_write(model: torch.nn.Module, filename: str) -> None:
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "save_model", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(path, second.model.model, _meta(second))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "the staging folder is removed"
    monkeypatch.undo()
    x = _batch(first)
    with torch.no_grad():
        assert_same_logits(load(path)(x), first.model(x))


def test_hf_bundle_round_trip_without_the_source_folder(tiny_hf_folder: Path,
                                                        tmp_path: Path) -> None:
    source = tmp_path / "hf-source"
    shutil.copytree(tiny_hf_folder, source)
    created = create(str(source), num_classes=2)
    created.model.eval()
    path = save_bundle(tmp_path / "bundle", created.model.model,
                       _meta(created, labels=["no", "yes"]))
    shutil.rmtree(source)  # the bundle must not need it
    predictor = load(path)
    assert predictor.preprocessing.input_size == (32, 32)
    x = _batch(created, n=3)
    with torch.no_grad():
        assert_same_logits(predictor(x), created.model(x))


# ------------------------------------------------------------------ Predictor on files
def test_predict_paths_matches_manual_preprocessing(saved: tuple[Path, CreatedModel],
                                                    tiny_image_folder: Path,
                                                    tmp_path: Path) -> None:
    path, _ = saved
    predictor = load(path)
    files = sorted((tiny_image_folder / "red").glob("*.png"))[:5]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    results = list(predictor.predict_paths([*files[:2], broken, *files[2:]], top_k=10,
                                           batch_size=2))
    errors = [r for r in results if isinstance(r, PredictionError)]
    predictions = [r for r in results if isinstance(r, Prediction)]
    assert [e.path for e in errors] == [str(broken)]
    assert errors[0].error == "not an image"
    assert [p.path for p in predictions] == [str(f) for f in files]

    batch = torch.stack([eval_transform(predictor.preprocessing)(load_rgb(f)[0]) for f in files])
    probs = predictor(batch).softmax(1)
    for prediction, row in zip(predictions, probs, strict=True):
        assert len(prediction.topk) == len(LABELS), "top_k is clamped to the classes"
        assert prediction.label == LABELS[int(row.argmax())]
        assert prediction.score == pytest.approx(float(row.max()), abs=1e-6)
        scores = [t["score"] for t in prediction.topk]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert prediction.to_dict().keys() == {"path", "label", "score", "topk"}


def test_expand_paths(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "sub/c.png", ".hidden.png", "notes.txt"):
        (root / name).write_bytes(b"x")
    single = tmp_path / "single.webp"
    single.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    found, missing = expand_paths([
        str(root), str(single), str(root / "*.png"), str(tmp_path / "missing.png"),
        str(tmp_path / "none-*.png"), str(tmp_path / "empty"),
    ])
    expected = [root / "a.JPG", root / "b.png", root / "sub" / "c.png", single]
    assert found == expected, "sorted, recursive, deduplicated, as typed"
    assert [(m.path, m.error) for m in missing] == [
        (str(tmp_path / "missing.png"), "no such file or folder"),
        (str(tmp_path / "none-*.png"), "no file matches this pattern"),
        (str(tmp_path / "empty"), missing[2].error)]
    assert missing[2].error.startswith("no images in this folder (looked for ")


def test_expand_paths_keeps_symlinked_paths_as_typed(tmp_path: Path) -> None:
    """Data linked from elsewhere (site-packages) shows the link the user typed, once."""
    real = tmp_path / "site-packages" / "pkg" / "data"
    real.mkdir(parents=True)
    (real / "a.png").write_bytes(b"x")
    (tmp_path / "linked").symlink_to(real)
    found, _ = expand_paths([str(tmp_path / "linked"), str(real / "a.png")])
    assert found == [tmp_path / "linked" / "a.png"]


def test_save_tensors_adds_a_file_to_a_bundle_and_refuses_other_folders(tmp_path: Path) -> None:
    from vitkit.bundle import load_tensors, save_tensors

    bundle = save_bundle(tmp_path / "b", torch.nn.Linear(2, 2), BundleMeta(
        backbone={"name": "x"}, labels=["a", "b"], preprocessing={}))
    save_tensors(bundle, "ood.safetensors", {"mean": torch.arange(3.0)})
    assert load_tensors(bundle, "ood.safetensors")["mean"].tolist() == [0.0, 1.0, 2.0]
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]
    with pytest.raises(BundleError):
        save_tensors(tmp_path, "ood.safetensors", {"mean": torch.zeros(1)})


def test_files_written_atomically_are_readable_by_others(tmp_path: Path) -> None:
    from vitkit.bundle import write_json_atomic

    write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").stat().st_mode & 0o044 == 0o044  # group/other read (umask 022)
