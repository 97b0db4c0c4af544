"""What a new user meets in the first hour: the demo, its "again" lines, exit codes, fail-fast
options, help text, and files that keep the umask's modes."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.e2e.cli import ENV, run_cli

VITKIT = Path(sys.executable).with_name("vitkit")


def _no_venv_env() -> dict[str, str]:
    """The environment of a shell in which the venv was never activated."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != Path(venv_bin).resolve())
    return {**ENV, "PATH": path or "/usr/bin:/bin", "COLUMNS": "200"}


def _again_lines(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    start = lines.index("again:") + 1
    commands = []
    for line in lines[start:]:
        if not line.startswith("  ") or line[2:3].isspace():
            break
        commands.append(line.strip())
    return commands


@pytest.mark.slow
@pytest.mark.skipif(not VITKIT.is_file(), reason="the vitkit console script is not installed")
def test_quick_demo_prints_runnable_again_lines_and_step_times(tmp_path: Path) -> None:
    pytest.importorskip("conformal_clip_data")
    env = _no_venv_env()
    proc = subprocess.run([str(VITKIT), "demo", "--quick", "--out", "demo-output"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for step in range(1, 5):
        assert f"step {step} took " in proc.stderr
    assert "where the time went" in proc.stderr and "total" in proc.stderr
    assert "got the right class" in proc.stderr, "the test figures in plain words"
    assert '{"path"' not in proc.stderr, "tables, not raw JSON"
    latest = tmp_path / "demo-output" / "latest"
    assert latest.is_symlink() and (latest / "classifier" / "bundle" / "vitkit.json").is_file()
    commands = _again_lines(proc.stderr)
    assert len(commands) == 3
    # `vitkit` is not on this PATH: the lines must name the command by a path that works.
    assert all(shlex.split(c)[0] == str(VITKIT.resolve()) for c in commands), commands
    for command in commands:
        again = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=300, check=False)
        assert again.returncode == 0, (command, again.stderr[-2000:])


@pytest.mark.slow
def test_an_interrupted_demo_keeps_the_last_complete_run(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("conformal_clip_data")
    from vitkit.workflows import demo

    tiny = demo.DemoPlan(images_per_class=20, epochs=2, anomaly_fit=12, anomaly_test=4,
                         anomaly_size=64)
    monkeypatch.setattr(sys, "argv", [str(VITKIT)])
    first = demo.run_demo(tmp_path, tiny, progress=False)
    assert (tmp_path / "latest").resolve() == first.run.resolve()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_anomaly_demo", interrupted)
    time.sleep(1.1)  # a new run folder name (one per second)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(tmp_path, tiny, progress=False)
    assert (tmp_path / "latest").resolve() == first.run.resolve(), "still the complete run"
    assert (first.bundle / "model.safetensors").is_file()
    assert (first.anomaly_bundle / "vitkit.json").is_file()

    monkeypatch.undo()
    monkeypatch.setattr(sys, "argv", [str(VITKIT)])
    time.sleep(1.1)
    third = demo.run_demo(tmp_path, tiny, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", third.run.name], \
        "superseded and interrupted runs are removed once a new one is complete"


# ------------------------------------------------------------------ exit codes
def test_predict_on_nothing_exits_2_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    missing = run_cli("predict", tmp_path / "no-bundle", tmp_path / "nope.jpg", "--json")
    empty = run_cli("predict", tmp_path / "no-bundle", tmp_path / "empty", "--json")
    for proc in (missing, empty):
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert "no such file or folder" in " ".join(missing.stderr.split())
    assert "no images in this folder" in " ".join(empty.stderr.split())


def test_every_image_verb_refuses_nothing_to_do(tmp_path: Path) -> None:
    for args in (["explain", tmp_path / "b", tmp_path / "nope.png"],
                 ["anomaly", "score", tmp_path / "b", tmp_path / "nope.png"]):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "no such file or folder" in " ".join(proc.stderr.split())


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    proc = run_cli("report", tmp_path)
    assert proc.returncode == 2
    assert "not a training run folder" in " ".join(proc.stderr.split())
    assert not (tmp_path / "report.html").exists()


@pytest.mark.slow
def test_predict_counts_failures_and_keeps_exit_0(trained_bundles: dict[str, Path],
                                                  tiny_image_folder: Path,
                                                  tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    image = next((tiny_image_folder / "red").iterdir())
    proc = run_cli("predict", trained_bundles["cnn"], image, broken, tmp_path / "gone.png")
    assert proc.returncode == 0, proc.stderr
    assert "1 classified, 2 failed" in proc.stderr
    only_bad = run_cli("predict", trained_bundles["cnn"], broken)
    assert only_bad.returncode == 2
    assert "no image could be classified" in " ".join(only_bad.stderr.split())


# ------------------------------------------------------------------ fail fast
def test_unknown_model_fails_before_the_data_is_read(tmp_path: Path, imagegen) -> None:
    data = imagegen.folder(tmp_path / "data", per_class=4)
    proc = run_cli("train", data, "--model", "resnet5", "--out", tmp_path / "run")
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    assert "unknown model 'resnet5'" in message and "resnet50" in message
    assert "usable images" not in message, "refused before any image was decoded"
    assert not (tmp_path / "run").exists(), "nothing written"


def _imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``python -X importtime``'s lines ``import time: us | us | name``."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_bad_numbers_are_refused_before_anything_loads() -> None:
    # -X importtime lists every module the process imported, so "torch was never imported"
    # is checked directly instead of through the wall time (a loaded machine made that flaky
    # and a fast one let an import through).
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vitkit", "train", "data", "--epochs", "0"],
        capture_output=True, text=True, env=ENV, timeout=60, check=False)
    assert proc.returncode == 2
    assert "Invalid value for '--epochs'" in proc.stderr
    modules = _imported_modules(proc.stderr)
    assert {"vitkit", "click"} <= modules, "the import listing was read"
    heavy = {"torch", "torchvision", "timm", "numpy", "PIL"} & modules
    assert not heavy, f"imported before the options were checked: {sorted(heavy)}"


# ------------------------------------------------------------------ help at 80 columns
@pytest.mark.parametrize("verb", [["predict"], ["train"], ["anomaly", "fit"], ["demo"]])
def test_help_reads_at_80_columns(verb: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "vitkit", *verb, "--help"], capture_output=True,
                          text=True, env={**ENV, "COLUMNS": "80"}, timeout=60, check=False)
    assert proc.returncode == 0
    assert "<bool>" not in proc.stdout
    for block in proc.stdout.split("│ --")[1:]:
        if "(default:" in block:
            assert "[default:" not in block, block


def test_help_paragraphs_are_not_broken_mid_sentence() -> None:
    proc = subprocess.run([sys.executable, "-m", "vitkit", "predict", "--help"],
                          capture_output=True, text=True, env={**ENV, "COLUMNS": "200"},
                          timeout=60, check=False)
    assert "counted on stderr and listed as rows" in proc.stdout


# ------------------------------------------------------------------ files a user can share
@pytest.mark.slow
def test_run_and_bundle_files_follow_the_umask(tmp_path: Path, imagegen) -> None:
    data = imagegen.folder(tmp_path / "data", per_class=6)
    script = (f"import os; os.umask(0o022); from tests.e2e.cli import train_tiny; "
              f"train_tiny({str(data)!r}, {str(tmp_path / 'run')!r})")
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2],
                          env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    for path in [run, *run.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    for name in ("splits.csv", "skipped.csv", "metrics.csv"):
        assert b"\r\n" not in (run / name).read_bytes(), name
