"""`vitkit robustness`: accuracy under image corruptions and adversarial attacks.

The images are resized and cropped once, as the model expects them, and kept as pixels in
``[0, 1]``; each corruption (:mod:`vitkit.evaluate.corruptions`) is applied to those pixels,
then the bundle's normalisation, then the chosen variant runs. So an int8 or OpenVINO variant
is measured on exactly the corrupted images the fp32 model sees.

Adversarial examples need gradients: they are crafted on the bundle's fp32 torch model
(:mod:`vitkit.evaluate.adversarial`) and evaluated on the chosen variant. For any variant other
than ``torch-fp32`` the attack is a *transfer* attack (``transferred: true``), usually weaker
than a white-box attack on that variant would be.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitkit.bundle import write_json_atomic
from vitkit.compress.reference import _balanced_subset
from vitkit.console import make_progress, stderr_console
from vitkit.data import ImageDataset, Sample, eval_transform, make_loader, scan, validate_samples
from vitkit.errors import ConfigError, DataError
from vitkit.evaluate.adversarial import Normalized, fgsm, pgd
from vitkit.evaluate.corruptions import CORRUPTIONS, corrupt
from vitkit.predictor.predict import Predictor, load
from vitkit.report.plots import plot_robustness
from vitkit.workflows.evaluate import select_eval_split
from vitkit.workflows.run_folder import refresh_report, run_folder_of

ROBUSTNESS_JSON = "robustness.json"
ROBUSTNESS_PNG = "robustness.png"
DEFAULT_EPSILONS = (1.0, 2.0, 4.0, 8.0)  # in 1/255 units
DEFAULT_LIMIT = 500
FP32 = "torch-fp32"


@dataclass
class CorruptionScore:
    name: str
    severity: float
    accuracy: float
    drop: float  # clean accuracy minus this accuracy (a fraction, like accuracy)


@dataclass
class AttackScore:
    attack: str  # fgsm or pgd
    epsilon: float  # in 1/255 units
    accuracy: float
    drop: float
    transferred: bool  # crafted on the fp32 torch model, evaluated on another variant


@dataclass
class RobustnessResult:
    """What `vitkit robustness --json` prints (keys are a contract for scripts)."""

    clean_accuracy: float
    n: int
    variant: str
    corruptions: list[CorruptionScore]
    adversarial: list[AttackScore]
    seconds: float
    split: str = ""
    data: str = ""
    bundle: str = ""
    pgd_steps: int = 10
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Images:
    """The evaluated images once preprocessed: (uint8 pixels (B, 3, H, W), targets) batches."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def n(self) -> int:
        return sum(len(y) for _, y in self.batches)

    def pixels(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for i, (pixels, targets) in enumerate(self.batches):
            yield i, pixels.float() / 255.0, targets


def run_robustness(bundle: Path, data: str, variant: str | None = None,
                   noise: Sequence[float] | None = None,
                   epsilons: Sequence[float] = DEFAULT_EPSILONS, pgd_steps: int = 10,
                   limit: int | None = DEFAULT_LIMIT, corruptions: Sequence[str] | None = None,
                   out: Path | None = None, batch_size: int = 32, seed: int = 0,
                   progress: bool = True) -> RobustnessResult:
    """Measures ``bundle`` (its ``variant``) on the evaluation split of ``data`` (test, else
    val, else every image; a class-balanced seeded subset of ``limit`` images), clean, under
    each corruption and severity, and under FGSM and PGD at each epsilon (in 1/255 units).

    Files (``robustness.json``, ``robustness.png``) go to ``out``, else to the bundle's run
    folder when it sits in one (its report is re-rendered), else nowhere.
    """
    started = time.perf_counter()
    families = _check_options(corruptions, noise, epsilons, pgd_steps, limit)
    predictor = load(bundle, variant=variant)
    split, samples = _evaluation_samples(data, predictor, limit, seed, progress)
    images = _load_pixels(samples, predictor, batch_size)
    severities = {name: tuple(noise) if name == "noise" and noise else CORRUPTIONS[name].severities
                  for name in families}
    settings = 1 + sum(len(s) for s in severities.values()) + 2 * len(epsilons)
    transferred = predictor.variant.name != FP32
    with make_progress(progress) as bar:
        task = bar.add_task("robustness", total=settings * images.n, stats="") if bar else None

        def accuracy(make: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
                     label: str) -> float:
            if bar is not None and task is not None:
                bar.update(task, stats=label)
            right = 0
            for i, pixels, targets in images.pixels():
                logits = predictor(_normalize(make(i, pixels, targets), predictor))
                right += int((logits.argmax(1) == targets).sum())
                if bar is not None and task is not None:
                    bar.update(task, advance=len(targets))
            return right / images.n

        clean = accuracy(lambda _i, x, _y: x, "clean")
        scores = []
        for name, levels in severities.items():
            for level in levels:
                acc = accuracy(_corruption(name, level, seed), f"{name} {level:g}")
                scores.append(CorruptionScore(name, float(level), acc, clean - acc))
        attacks = []
        if epsilons:  # an int8 or exported variant loads the fp32 model only for attacks
            forward = Normalized(predictor.torch_model(), predictor.preprocessing.mean,
                                 predictor.preprocessing.std).to(predictor.device).eval()
        for eps in epsilons:
            for attack in ("fgsm", "pgd"):
                make = _attack(attack, forward, eps / 255.0, pgd_steps, seed, predictor.device)
                acc = accuracy(make, f"{attack} {eps:g}/255")
                attacks.append(AttackScore(attack, float(eps), acc, clean - acc, transferred))
    notes = []
    if transferred and epsilons:
        notes.append(f"adversarial examples were crafted on the fp32 torch model and "
                     f"transferred to {predictor.variant.name} (a black-box attack; a white-box "
                     "one on the variant itself could do more harm).")
    result = RobustnessResult(
        clean_accuracy=clean, n=images.n, variant=predictor.variant.name, corruptions=scores,
        adversarial=attacks, seconds=round(time.perf_counter() - started, 1), split=split,
        data=str(data), bundle=str(bundle), pgd_steps=pgd_steps, notes=notes)
    run_dir = out or run_folder_of(bundle)
    if run_dir is not None:
        result.files = write_robustness(result, run_dir)
    return result


def write_robustness(result: RobustnessResult, run_dir: Path) -> list[str]:
    """Writes ``robustness.json`` and ``robustness.png`` into ``run_dir`` (and re-renders its
    report when it has one); returns the paths written."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = [run_dir / ROBUSTNESS_JSON, run_dir / ROBUSTNESS_PNG]
    result.files = [str(f) for f in files]
    write_json_atomic(files[0], result.to_dict())
    plot_robustness(result.to_dict(), files[1])
    report = refresh_report(run_dir)
    return [str(f) for f in files] + ([str(report)] if report is not None else [])


def _check_options(corruptions: Sequence[str] | None, noise: Sequence[float] | None,
                   epsilons: Sequence[float], pgd_steps: int, limit: int | None) -> list[str]:
    families = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    unknown = [name for name in families if name not in CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruption(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(CORRUPTIONS)}.")
    if noise is not None and any(not 0 <= s <= 1 for s in noise):
        raise ConfigError(f"--noise takes standard deviations in [0, 1] pixel units such as "
                          f"0.02,0.05,0.1; got {list(noise)}.")
    if any(not 0 <= e <= 255 for e in epsilons):
        raise ConfigError(f"--eps takes epsilons in 1/255 units between 0 and 255, such as "
                          f"1,2,4,8; got {list(epsilons)}.")
    if pgd_steps < 1:
        raise ConfigError(f"--pgd-steps must be at least 1, got {pgd_steps}.")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}.")
    return families


def _evaluation_samples(data: str, predictor: Predictor, limit: int | None, seed: int,
                        progress: bool) -> tuple[str, list[Sample]]:
    split, samples = select_eval_split(scan(data).samples)
    unknown = sorted({s.label for s in samples} - set(predictor.labels))
    if unknown:
        raise DataError(
            f"{data} has classes the model does not know: {', '.join(unknown)}. The bundle "
            f"predicts {', '.join(predictor.labels)}; use data with those class folders.")
    if limit is not None and len(samples) > limit:
        samples = _balanced_subset(samples, limit, seed)
    report = validate_samples(samples, progress=progress, intensity=predictor.intensity)
    if report.skipped:
        stderr_console.print(f"[yellow]{report.summary()}[/]")
    if not report.usable:
        raise DataError(f"no usable images in {data} ({report.summary()}).")
    return split, report.usable


def _load_pixels(samples: list[Sample], predictor: Predictor, batch_size: int) -> _Images:
    # The evaluation transform without normalisation: resized, cropped pixels in [0, 1].
    identity = predictor.preprocessing.model_copy(update={"mean": (0.0, 0.0, 0.0),
                                                          "std": (1.0, 1.0, 1.0)})
    class_to_idx = {label: i for i, label in enumerate(predictor.labels)}
    loader = make_loader(ImageDataset(samples, class_to_idx, eval_transform(identity),
                                      intensity=predictor.intensity),
                         batch_size=batch_size, shuffle=False, seed=0)
    # Kept as uint8 (4x less memory): ToTensor produced exact multiples of 1/255.
    return _Images([((x * 255).round().to(torch.uint8), y) for x, y in loader])


def _normalize(pixels: torch.Tensor, predictor: Predictor) -> torch.Tensor:
    mean = torch.tensor(predictor.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(predictor.preprocessing.std).view(1, 3, 1, 1)
    return (pixels.cpu() - mean) / std


def _corruption(name: str, severity: float, seed: int
                ) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
    def make(batch: int, pixels: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 7919 + batch)
        return corrupt(pixels, name, severity, generator)

    return make


def _attack(attack: str, forward: Normalized, epsilon: float, steps: int, seed: int,
            device: torch.device) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
    def make(batch: int, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, y = pixels.to(device), targets.to(device)
        if attack == "fgsm":
            return fgsm(forward, x, y, epsilon).cpu()
        generator = torch.Generator(device=device).manual_seed(seed * 7919 + batch)
        return pgd(forward, x, y, epsilon, steps=steps, generator=generator).cpu()

    return make
