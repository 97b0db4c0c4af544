"""`vitkit train --domain-adapt dann` in-process and through the CLI's error paths: a killed
run resumes to the uninterrupted result (domain head and schedule included), and bad target
folders get a clear exit-2 message."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import ImageOps
from tests.conftest import ImageGen
from tests.e2e.cli import run_cli

import vitkit
from vitkit.classify.checkpoint import load_checkpoint
from vitkit.classify.config import TrainConfig
from vitkit.classify.domain import DannLoss
from vitkit.errors import ConfigError
from vitkit.workflows.train import run_training


def inverted_folder(root: Path, imagegen: type[ImageGen], classes: tuple[str, ...], per_class: int,
                    labelled: bool, start: int = 100) -> Path:
    """The conftest's class images with inverted colours: a domain shift a tiny model sees."""
    for label in classes:
        folder = root / label if labelled else root / "batch"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = ImageOps.invert(imagegen.image(label, start + i, 48))
            image.save(folder / f"{label}_{i:03d}.png")
    return root


def _config(data: Path, target: Path, out: Path, **changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "data": str(data), "model": "test_resnet", "weights": "none", "image_size": 32,
        "epochs": 3, "batch_size": 8, "num_workers": 0, "seed": 5, "out": str(out),
        "stages": {"head": {"share": 1.0}, "top": {"share": 0.0}, "full": {"share": 2.0}},
        "trust": {"ood": False, "calibrate": False, "explain_examples": 0,
                  "feature_map": False},
        "domain": {"method": "dann", "target": str(target)},
    }
    values.update(changes)
    return TrainConfig(**values)


class _Killed(Exception):
    """Stands in for a SIGKILL in the middle of an epoch."""


def test_a_killed_dann_run_resumes_to_the_uninterrupted_result(
        tiny_image_folder: Path, imagegen: type[ImageGen], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed mid-way through epoch 3 (the second adversarial one), resumed: the same epochs,
    losses, weights, domain head and schedule position as a run never interrupted."""
    target = inverted_folder(tmp_path / "target", imagegen, ("red", "green", "blue"), 4, False)
    calls: dict[str, int | None] = {"n": 0, "kill_at": None}
    original = DannLoss.__call__

    def counting(self: DannLoss, outputs: object, batch: object) -> object:
        calls["n"] = (calls["n"] or 0) + 1
        if calls["kill_at"] is not None and calls["n"] == calls["kill_at"]:
            raise _Killed
        return original(self, outputs, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(DannLoss, "__call__", counting)
    whole = run_training(_config(tiny_image_folder, target, tmp_path / "A"), progress=False)
    head_calls = -(-whole.train_images // 16)  # the head stage's batch size is 16
    per_epoch = -(-whole.train_images // 8)
    assert calls["n"] == head_calls + 2 * per_epoch

    calls.update(n=0, kill_at=head_calls + per_epoch + 2)
    killed = _config(tiny_image_folder, target, tmp_path / "B")
    with pytest.raises(_Killed):
        run_training(killed, progress=False)
    assert len((tmp_path / "B" / "metrics.csv").read_text().splitlines()) == 1 + 2
    with pytest.raises(ConfigError, match="--resume"):
        run_training(killed, progress=False)

    calls.update(n=0, kill_at=None)
    resumed = run_training(killed, resume=True, progress=False)
    assert calls["n"] == per_epoch  # only epoch 3 ran again
    rows_a, rows_b = (list(csv.DictReader((tmp_path / run / "metrics.csv").open()))
                      for run in ("A", "B"))
    assert [r["epoch"] for r in rows_b] == ["1", "2", "3"]
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(row_b[key]) == pytest.approx(float(row_a[key]), rel=1e-5), key
    hooks = [load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["loss_hook"]
             for run in ("A", "B")]
    assert int(hooks[0]["steps"]) == int(hooks[1]["steps"]) == 2 * per_epoch
    for key, tensor in hooks[0].items():
        torch.testing.assert_close(hooks[1][key], tensor, rtol=1e-5, atol=1e-6, msg=key)
    state_a = vitkit.load(whole.bundle).torch_model().state_dict()
    state_b = vitkit.load(resumed.bundle).torch_model().state_dict()
    for key, tensor in state_a.items():
        torch.testing.assert_close(state_b[key], tensor, rtol=1e-5, atol=1e-6, msg=key)
    assert whole.domain_adaptation is not None and resumed.domain_adaptation is not None
    assert resumed.domain_adaptation["domain_accuracy"] == pytest.approx(
        whole.domain_adaptation["domain_accuracy"])
    assert resumed.domain_adaptation["settings"]["adapted_steps"] == 2 * per_epoch


@pytest.mark.slow
def test_a_dann_vit_trains_its_domain_head(tiny_image_folder: Path, imagegen: type[ImageGen],
                                           tmp_path: Path) -> None:
    """The class token of a (tiny) ViT is what the domain head reads; the optimizer trains
    the head (AdamW's running gradient average of its first matrix is not zero)."""
    target = inverted_folder(tmp_path / "target", imagegen, ("red", "green", "blue"), 3, False)
    config = _config(tiny_image_folder, target, tmp_path / "run", model="test_vit", epochs=2)
    result = run_training(config, progress=False)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    hook_state = checkpoint["loss_hook"]
    assert hook_state["classifier.0.weight"].shape == (256, 64)  # test_vit's width
    moments = [state["exp_avg"] for state in checkpoint["optimizer"]["state"].values()
               if state["exp_avg"].shape == (256, 64)]
    assert len(moments) == 1 and moments[0].abs().sum() > 0
    assert int(hook_state["steps"]) == -(-result.train_images // 8)
    record = result.domain_adaptation
    assert record is not None and 0.0 <= record["domain_accuracy"] <= 1.0


@pytest.mark.parametrize("case", ["empty target", "other classes"])
def test_the_cli_says_what_is_wrong_with_the_target_images(
        case: str, tiny_image_folder: Path, imagegen: type[ImageGen], tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    args: list[object] = ["train", tiny_image_folder, "--model", "test_resnet", "--weights",
                          "none", "--epochs", 2, "--out", tmp_path / "run", "--quiet",
                          "--target-domain", target]
    if case == "empty target":
        (target / "notes.txt").write_text("no images here\n")
        expected = ["--target-domain", "holds no images", "at least 4"]
        args += ["--domain-adapt", "dann"]
    elif case == "other classes":
        inverted_folder(target, imagegen, ("red", "green", "blue"), 2, False)
        labelled = imagegen.folder(tmp_path / "eval", ("red", "yellow"), 2)
        expected = ["--target-eval", "classes the training data does not: yellow"]
        args += ["--domain-adapt", "dann", "--target-eval", labelled]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    for words in expected:
        assert words in message, message
    assert not (tmp_path / "run").exists(), "a failed start leaves no run folder behind"


def test_target_options_need_the_method_and_an_image_stage(tiny_image_folder: Path,
                                                           tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="add --domain-adapt dann"):
        _config(tiny_image_folder, tmp_path, tmp_path / "run",
                domain={"target": str(tmp_path)})
    with pytest.raises(ValueError, match="needs the unlabelled target images"):
        _config(tiny_image_folder, tmp_path, tmp_path / "run", domain={"method": "dann"})
    with pytest.raises(ValueError, match="head stage keeps frozen"):
        _config(tiny_image_folder, tmp_path, tmp_path / "run",
                stages={"head": {"share": 1.0}, "top": {"share": 0.0}, "full": {"share": 0.0}})
