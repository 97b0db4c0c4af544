"""The real `vitkit` command in subprocesses: exit codes, stdout/stderr, run folders, resume.

Every run uses timm's tiny random-init models (`--weights none`) on generated images, offline.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from vitkit.classify.config import TrainConfig
from vitkit.config import dump_config
from vitkit.data import eval_transform, load_rgb
from vitkit.predictor.predict import load

MODEL = ["--model", "test_resnet", "--weights", "none"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def vitkit_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "vitkit", *map(str, args)]


def run_cli(*args: object, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vitkit_cmd(*args), capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    """stdout must be exactly one JSON document (people's output goes to stderr)."""
    return json.loads(ok(result).stdout)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------ one trained run, shared
@dataclass
class TrainedRun:
    data: Path
    run_dir: Path
    result: dict[str, Any]
    stderr: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_image_folder: Path) -> TrainedRun:
    work = tmp_path_factory.mktemp("cli-train")
    run_dir = work / "run"
    proc = run_cli("train", tiny_image_folder, *MODEL, "--epochs", 3, "--out", run_dir,
                   "--json", "--quiet", cwd=work)
    return TrainedRun(tiny_image_folder, run_dir, json_out(proc), proc.stderr)


@pytest.mark.slow
def test_train_prints_one_json_document(trained: TrainedRun) -> None:
    result = trained.result
    assert {"bundle", "val_accuracy", "epochs_run", "skipped"} <= result.keys()
    assert Path(result["bundle"]) == trained.run_dir / "bundle"
    assert isinstance(result["val_accuracy"], float)
    assert 0.0 <= result["val_accuracy"] <= 1.0
    assert result["epochs_run"] == 3
    assert result["skipped"] == 0
    assert result["train_images"] + result["val_images"] == 36
    assert result["test_accuracy"] is None
    assert "epoch 3" in trained.stderr, "progress lines go to stderr"


@pytest.mark.slow
def test_train_writes_the_run_folder(trained: TrainedRun) -> None:
    run = trained.run_dir
    for name in ("metrics.csv", "skipped.csv", "learning_curves.png", "confusion_matrix.png",
                 "report.html", "checkpoints/last.pt", "config.yaml", "splits.csv",
                 "bundle/vitkit.json", "bundle/model.safetensors"):
        assert (run / name).is_file(), name
        assert (run / name).stat().st_size > 0, name
    assert sorted(p.name for p in (run / "bundle").iterdir()) == [
        "model.safetensors", "ood.safetensors", "vitkit.json"]
    assert (run / "ood.json").is_file() and (run / "feature_map.png").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    metrics = read_csv(run / "metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2, 3]
    assert [r["stage"] for r in metrics] == ["head", "full", "full"]  # 1 head + 4 full, of 3
    assert all(0 <= float(r["val_acc"]) <= 1 for r in metrics)
    # Each class has its own colour and pattern: even a random-init body separates them.
    assert max(float(r["val_acc"]) for r in metrics) >= 0.5, "better than chance (1/3)"
    assert read_csv(run / "skipped.csv") == []

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "test_resnet"
    assert config["epochs"] == 3
    assert config["weights"] == "none"

    splits = read_csv(run / "splits.csv")
    assert len(splits) == 36
    assert {r["split"] for r in splits} == {"train", "val"}
    assert sum(r["split"] == "val" for r in splits) == trained.result["val_images"]

    meta = json.loads((run / "bundle" / "vitkit.json").read_text())
    assert meta["labels"] == ["blue", "green", "red"]
    assert meta["backbone"]["name"] == "test_resnet"
    assert meta["train"]["epochs_run"] == 3
    assert meta["train"]["metrics"]["val"]["accuracy"] == trained.result["val_accuracy"]
    best = int(meta["train"]["best_epoch"])
    assert best == trained.result["best_epoch"]
    assert float(metrics[best - 1]["val_acc"]) == max(float(r["val_acc"]) for r in metrics)
    assert "<html" in (run / "report.html").read_text().lower()


@pytest.mark.slow
def test_eval_json_matches_the_training_result(trained: TrainedRun) -> None:
    result = json_out(run_cli("eval", trained.result["bundle"], trained.run_dir / "splits.csv",
                              "--json", "--quiet"))
    assert {"accuracy", "balanced_accuracy", "per_class", "ece", "n"} <= result.keys()
    assert result["split"] == "val", "no test split: eval uses val"
    assert result["n"] == trained.result["val_images"]
    val_rows = [r for r in read_csv(trained.run_dir / "splits.csv") if r["split"] == "val"]
    assert result["n"] == len(val_rows)
    assert result["accuracy"] == pytest.approx(trained.result["val_accuracy"], abs=1e-12)
    assert set(result["per_class"]) == {"blue", "green", "red"}
    assert sum(m["support"] for m in result["per_class"].values()) == result["n"]
    assert 0.0 <= result["ece"] <= 1.0
    assert 0.0 <= result["balanced_accuracy"] <= 1.0
    assert result["skipped"] == []

    # The same number by hand, from the bundle loaded in this process.
    predictor = load(trained.result["bundle"])
    transform = eval_transform(predictor.preprocessing)
    batch = torch.stack([transform(load_rgb(Path(r["path"]))[0]) for r in val_rows])
    predicted = predictor(batch).argmax(1).tolist()
    correct = sum(predictor.labels[i] == r["label"] for i, r in zip(predicted, val_rows,
                                                                       strict=True))
    assert correct / len(val_rows) == pytest.approx(result["accuracy"])


@pytest.mark.slow
def test_predict_files_folders_globs_and_errors(trained: TrainedRun, tmp_path: Path) -> None:
    red = sorted((trained.data / "red").glob("*.png"))
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    missing = tmp_path / "missing.png"
    out_csv = tmp_path / "predictions.csv"
    proc = run_cli("predict", trained.result["bundle"], red[0], trained.data / "green",
                   str(trained.data / "blue" / "*.png"), missing, broken, "--json",
                   "--top-k", 2, "--csv", out_csv, "--no-ood")  # "unknown": tests/e2e/test_cli_ood
    results = json_out(proc)
    assert isinstance(results, list)
    errors = [r for r in results if "error" in r]
    predictions = [r for r in results if "error" not in r]
    assert {e["path"] for e in errors} == {str(missing), str(broken)}
    assert all(e.keys() == {"path", "error"} for e in errors)
    by_path = {e["path"]: e["error"] for e in errors}
    assert "no such file" in by_path[str(missing)]
    assert by_path[str(broken)] == "not an image"

    assert len(predictions) == 1 + 12 + 12
    assert all(p.keys() == {"path", "label", "score", "topk"} for p in predictions)
    for p in predictions:
        assert p["label"] in {"blue", "green", "red"}
        assert len(p["topk"]) == 2
        assert p["topk"][0] == {"label": p["label"], "score": p["score"]}
        assert p["topk"][0]["score"] >= p["topk"][1]["score"]
        assert 0.0 < p["score"] <= 1.0
    paths = [Path(p["path"]) for p in predictions]
    assert paths[0] == red[0], "as typed"
    assert {p.parent.name for p in paths[1:13]} == {"green"}
    assert {p.parent.name for p in paths[13:]} == {"blue"}

    rows = read_csv(out_csv)
    assert len(rows) == len(results)
    assert {r["path"] for r in rows if r["error"]} == {str(missing), str(broken)}
    assert all(r["label"] and float(r["score"]) > 0 for r in rows if not r["error"])


# ------------------------------------------------------------------ odd and broken images
@pytest.mark.slow
def test_train_skips_broken_images_and_converts_odd_ones(tmp_path: Path, imagegen) -> None:
    data = imagegen.folder(tmp_path / "data", ("red", "blue"), per_class=10)
    broken = imagegen.broken(data / "red")
    odd = imagegen.odd(data / "blue")
    run_dir = tmp_path / "run"
    result = json_out(run_cli("train", data, *MODEL, "--epochs", 1, "--out", run_dir,
                              "--json", "--quiet", cwd=tmp_path))
    assert result["skipped"] == len(broken) == 3
    assert result["train_images"] + result["val_images"] == 20 + len(odd)
    skipped = {Path(r["path"]).name: r["reason"] for r in read_csv(run_dir / "skipped.csv")}
    assert set(skipped) == {p.name for p in broken}
    assert skipped["empty.jpg"].startswith("empty file")
    assert skipped["notes.jpg"] == "not an image"
    assert skipped["truncated.jpg"].startswith("truncated or corrupt")
    used = {Path(r["path"]).name for r in read_csv(run_dir / "splits.csv")}
    assert {p.name for p in odd} <= used
    assert not {p.name for p in broken} & used
    assert (run_dir / "bundle" / "model.safetensors").is_file()


# ------------------------------------------------------------------ user errors: exit 2
@dataclass
class ErrorCase:
    args: list[object]
    expect: str


def _error_cases(root: Path, data: Path, imagegen) -> dict[str, ErrorCase]:
    one_class = imagegen.folder(root / "one-class", ("red",), per_class=4)
    unusable = root / "unusable"
    for label in ("cats", "dogs"):
        imagegen.broken(unusable / label)
    typo = root / "typo.yaml"
    typo.write_text("epoch: 3\n")
    existing = root / "existing-run"
    (existing / "checkpoints").mkdir(parents=True)
    (existing / "checkpoints" / "last.pt").write_bytes(b"a run was here")
    (root / "empty-out").mkdir()
    started = root / "started-run"  # resuming needs only the saved config to compare with
    dump_config(TrainConfig(data=str(data), model="test_resnet", weights="none", epochs=3,
                            out=str(started)), started / "config.yaml")
    out = root / "out"
    return {
        "missing data": ErrorCase(["train", root / "no-such-folder", *MODEL, "--out", out],
                                  "does not exist"),
        "single class": ErrorCase(["train", one_class, *MODEL, "--out", out],
                                  "at least two classes"),
        "no usable images": ErrorCase(["train", unusable, *MODEL, "--out", out],
                                      "no usable images"),
        "config typo": ErrorCase(["train", data, *MODEL, "--config", typo, "--out", out],
                                 "Did you mean 'epochs'?"),
        "resume without run": ErrorCase(["train", data, "--resume", "--out", root / "empty-out"],
                                        "cannot resume"),
        "out holds a run": ErrorCase(["train", data, *MODEL, "--out", existing],
                                     "holds an interrupted training run (0 epochs done"),
        "eval missing bundle": ErrorCase(["eval", root / "no-bundle", data],
                                         "not a vitkit bundle"),
        "resume with other options": ErrorCase(
            ["train", data, "--resume", "--epochs", 5, "--out", started],
            "cannot resume with different options (epochs)"),
    }


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory: pytest.TempPathFactory, tiny_image_folder: Path, imagegen,
               ) -> dict[str, tuple[ErrorCase, subprocess.CompletedProcess[str]]]:
    """Runs every error case once, a few at a time (most of the cost is importing torch)."""
    root = tmp_path_factory.mktemp("errors")
    cases = _error_cases(root, tiny_image_folder, imagegen)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_cli, *case.args, "--json", cwd=root)
                   for name, case in cases.items()}
        return {name: (cases[name], future.result()) for name, future in futures.items()}


ERROR_NAMES = ["missing data", "single class", "no usable images", "config typo",
               "resume without run", "out holds a run", "eval missing bundle",
               "resume with other options"]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_user_errors_exit_2_with_one_paragraph(
    error_runs: dict[str, tuple[ErrorCase, subprocess.CompletedProcess[str]]], name: str,
) -> None:
    case, proc = error_runs[name]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == "", "nothing on stdout, even with --json"
    assert "error:" in proc.stderr
    message = proc.stderr[proc.stderr.index("error:"):].strip()
    assert "\n\n" not in message, "one paragraph"
    assert case.expect in " ".join(message.split()), message


def test_out_holding_a_run_is_left_untouched(
    error_runs: dict[str, tuple[ErrorCase, subprocess.CompletedProcess[str]]],
) -> None:
    case, _ = error_runs["out holds a run"]
    existing = Path(str(case.args[case.args.index("--out") + 1]))
    assert sorted(p.name for p in existing.rglob("*")) == ["checkpoints", "last.pt"]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["train"], "Missing argument"),
        (["train", "data", "--epochs", "many"], "Invalid value for '--epochs'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str], expect: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert expect in proc.stderr
    assert proc.stdout == ""


def test_help() -> None:
    top = ok(run_cli("--help"))
    for verb in ("train", "eval", "predict", "report", "demo"):
        assert verb in top.stdout
    train = ok(run_cli("train", "--help"))
    text = " ".join(train.stdout.split())
    for option in ("--model", "--weights", "--epochs", "--out", "--config", "--resume",
                   "--json", "--quiet", "--batch-size", "--seed"):
        assert option in text, option
    assert "checkpoint" in text


# ------------------------------------------------------------------ resume after SIGKILL
RESUME_CONFIG = {
    "seed": 7,
    "num_workers": 0,
    "batch_size": 8,
    # 4 epochs: head 1, top 2, full 1; the kill lands in the second top epoch, so the resumed
    # run restores a stage's optimizer and schedule mid-way and then crosses into the next one.
    "stages": {"head": {"share": 1}, "top": {"share": 2}, "full": {"share": 1}},
}
COMPARED = ("epoch", "stage", "lr", "train_loss", "train_acc", "val_loss", "val_acc")


def _metric_rows(path: Path) -> list[dict[str, str]]:
    try:
        return read_csv(path)
    except FileNotFoundError:
        return []


def _assert_same_metrics(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        for key in COMPARED:
            if key in ("epoch", "stage"):
                assert row_a[key] == row_b[key]
            else:
                assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=1e-6,
                                                          abs=1e-9), (key, row_a, row_b)


def _start_and_kill_in_epoch_3(cmd: Sequence[str], run_dir: Path, log: Path,
                               fraction: float) -> bool:
    """Starts a run and SIGKILLs it ``fraction`` of epoch 2's training time after epoch 2 is
    saved, i.e. during epoch 3. Returns False when epoch 3 was already saved (too late)."""
    metrics = run_dir / "metrics.csv"
    with log.open("w") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=ENV,
                                   cwd=run_dir.parent)
        try:
            deadline = time.monotonic() + 240
            while len(rows := _metric_rows(metrics)) < 2:
                assert process.poll() is None, f"run ended early:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "run too slow"
                time.sleep(0.02)
            # Epoch 3 does the same work as epoch 2 (same stage), so this lands inside it.
            time.sleep(fraction * float(rows[1]["seconds"]))
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    return len(_metric_rows(metrics)) == 2


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path, imagegen) -> None:
    data = imagegen.folder(tmp_path / "data", per_class=12, seed=3)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(RESUME_CONFIG))
    run_a, run_b = tmp_path / "A", tmp_path / "B"

    def train_cmd(out: Path) -> list[str]:
        return vitkit_cmd("train", data, *MODEL, "--epochs", 4, "--config", config,
                          "--out", out, "--json", "--quiet")

    proc_a = subprocess.run(train_cmd(run_a), capture_output=True, text=True, env=ENV,
                            cwd=tmp_path, timeout=300, check=False)
    result_a = json_out(proc_a)
    assert [r["stage"] for r in read_csv(run_a / "metrics.csv")] == ["head", "top", "top",
                                                                     "full"]

    # Usually the first try kills mid-epoch; on a machine whose speed changes under the test,
    # kill sooner (0.0: between epochs 2 and 3, still before epoch 3 is saved).
    for fraction in (0.3, 0.1, 0.0):
        if _start_and_kill_in_epoch_3(train_cmd(run_b), run_b, tmp_path / "b.log", fraction):
            break
        shutil.rmtree(run_b)
    else:
        pytest.fail("could not kill the run before epoch 3 was saved")
    assert not (run_b / "bundle").exists()

    resumed = run_cli("train", data, "--resume", "--out", run_b, "--json", "--quiet",
                      cwd=tmp_path)
    result_b = json_out(resumed)
    assert "resuming after epoch 2" in resumed.stderr

    _assert_same_metrics(read_csv(run_a / "metrics.csv"), read_csv(run_b / "metrics.csv"))
    assert result_b["epochs_run"] == result_a["epochs_run"] == 4
    assert result_b["best_epoch"] == result_a["best_epoch"]
    assert result_b["val_accuracy"] == result_a["val_accuracy"]

    predictor_a, predictor_b = load(result_a["bundle"]), load(result_b["bundle"])
    transform = eval_transform(predictor_a.preprocessing)
    images = sorted(data.rglob("*.png"))
    batch = torch.stack([transform(load_rgb(p)[0]) for p in images])
    torch.testing.assert_close(predictor_b(batch), predictor_a(batch), rtol=1e-5, atol=1e-6)
    state_a = predictor_a.model.state_dict()
    state_b = predictor_b.model.state_dict()
    for key, tensor in state_a.items():
        torch.testing.assert_close(state_b[key], tensor, rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.slow
def test_resume_of_a_finished_run_in_a_moved_folder(trained: TrainedRun,
                                                    tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(trained.run_dir, moved)
    original_meta = trained.run_dir / "bundle" / "vitkit.json"
    stamp = original_meta.stat().st_mtime_ns

    # A finished run resumes to the same bundle, in the folder given, not where it started.
    again = json_out(run_cli("train", trained.data, "--resume", "--out", moved, "--json",
                             "--quiet", cwd=tmp_path))
    assert Path(again["bundle"]) == moved / "bundle"
    assert again["epochs_run"] == 3
    assert again["val_accuracy"] == trained.result["val_accuracy"]
    assert original_meta.stat().st_mtime_ns == stamp, "the original run is untouched"
    assert yaml.safe_load((moved / "config.yaml").read_text())["out"] == str(moved)
    assert read_csv(moved / "metrics.csv") == read_csv(trained.run_dir / "metrics.csv")
    before = load(trained.run_dir / "bundle").model.state_dict()
    after = load(moved / "bundle").model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------ accelerate launch
@pytest.mark.slow
def test_accelerate_launch(tmp_path: Path, two_class_folder: Path) -> None:
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists():
        found = shutil.which("accelerate")
        if found is None:
            pytest.skip("the accelerate launcher is not installed")
        launcher = Path(found)
    run_dir = tmp_path / "run"
    cmd = [str(launcher), "launch", "--num_processes", "1", "--num_machines", "1", "--cpu",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vitkit", "train",
           str(two_class_folder), *MODEL, "--epochs", "1", "--out", str(run_dir), "--json",
           "--quiet"]
    env = {**ENV, "HF_HOME": str(tmp_path / "hf-home")}  # no accelerate config file needed
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)
    assert result["epochs_run"] == 1
    assert (run_dir / "bundle" / "vitkit.json").is_file()
    assert (run_dir / "bundle" / "model.safetensors").is_file()
    load(run_dir / "bundle")
