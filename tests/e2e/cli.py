"""Running `vitkit` in a subprocess, and a tiny trained bundle to run it on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vitkit.classify.config import TrainConfig
from vitkit.workflows.train import run_training

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m vitkit ARGS`` offline; never raises on a non-zero exit."""
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=ENV, timeout=300, check=False)


def train_tiny(data: Path, out: Path, model: str = "test_resnet") -> Path:
    """One epoch of a random-init test model on ``data``; returns the bundle."""
    config = TrainConfig(data=str(data), model=model, weights="none", epochs=1, batch_size=8,
                         out=str(out))
    return Path(run_training(config, progress=False).bundle)
