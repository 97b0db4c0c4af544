"""`vitkit train|eval|predict` for image + audio data: what the verbs of
:mod:`vitkit.cli.classify` run when DATA is an ``image,audio,label`` manifest or the bundle's
task is ``fusion``. No verbs of its own: the classifier's verbs dispatch here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from vitkit.cli.common import (
    finish_items,
    path_width,
    plural,
    print_json,
    print_per_class,
    short_path,
)
from vitkit.console import stderr_console
from vitkit.errors import BundleError, ConfigError, DataError, VitkitError


def is_fusion_bundle(bundle: Path) -> bool:
    """True when ``bundle`` is a bundle whose task is ``fusion`` (anything unreadable is
    left to the classifier's path, which explains it)."""
    from vitkit.bundle import read_meta

    try:
        return read_meta(bundle).task == "fusion"
    except BundleError:
        return False


def refuse_options(ctx: typer.Context, allowed: set[str], what: str) -> None:
    """A clear error for options given on the command line that mean nothing to an image +
    audio model (the classifier's OOD fit, calibration, TTA, variants, …)."""
    named = [param.opts[0] for param in ctx.command.params
             if param.name not in allowed and param.name is not None
             and getattr(ctx.get_parameter_source(param.name), "name", "DEFAULT") != "DEFAULT"]
    if named:
        raise ConfigError(f"{', '.join(named)} {'does' if len(named) == 1 else 'do'} not apply "
                          f"to {what}: those options are the image classifier's. Drop "
                          f"{'it' if len(named) == 1 else 'them'}; the image + audio options "
                          "are listed in the fusion guide (docs/guides/fusion.md).")


def split_epochs(epochs: int) -> dict[str, int]:
    """``--epochs N`` as the staged loop's stages: a fifth (at least one) on the frozen
    image backbone, the rest with every layer; one epoch trains every layer."""
    if epochs < 2:
        return {"head_epochs": 0, "full_epochs": epochs}
    head = max(1, round(epochs / 5))
    return {"head_epochs": head, "full_epochs": epochs - head}


TRAIN_OPTIONS = {"data", "model", "weights", "epochs", "out", "config", "batch_size", "seed",
                 "device", "precision", "resume", "json_out", "quiet"}
EVAL_OPTIONS = {"bundle", "data", "batch_size", "modality", "json_out", "quiet"}
PREDICT_OPTIONS = {"bundle", "paths", "image", "audio", "top_k", "batch_size", "csv_file",
                   "json_out", "quiet"}


def train_fusion(ctx: typer.Context) -> None:
    """`vitkit train MANIFEST.csv` on an image,audio,label manifest (``ctx``: the train
    command's options)."""
    from vitkit.config import load_config
    from vitkit.workflows.fusion import FusionTrainConfig, run_fusion_training
    from vitkit.workflows.train import resolve_resume_config

    refuse_options(ctx, TRAIN_OPTIONS, "an image + audio manifest")
    options = ctx.params
    given: dict[str, Any] = {key: options[key] for key in (
        "data", "model", "weights", "out", "batch_size", "seed", "device", "precision")}
    if options["epochs"] is not None:
        given.update(split_epochs(options["epochs"]))
    cfg = load_config(FusionTrainConfig, options["config"], given)
    if options["resume"]:
        cfg = resolve_resume_config(Path(cfg.out), cfg,
                                    {k for k, v in given.items() if v is not None})
    result = run_fusion_training(cfg, resume=options["resume"], progress=not options["quiet"])
    if options["json_out"]:
        print_json(result.to_dict())
        return
    lines = [f"[bold green]done[/]: val accuracy {result.val_accuracy:.3f} after "
             f"{plural(result.epochs_run, 'epoch')} (best epoch {result.best_epoch})"]
    for split, figures in result.by_modality.items():
        lines.append(f"  {split}: " + ", ".join(f"{m} {v:.3f}" for m, v in figures.items()))
    lines.append(f"  bundle: {result.bundle}")
    stderr_console.print("\n".join(lines))


def eval_fusion(ctx: typer.Context) -> None:
    """`vitkit eval BUNDLE MANIFEST.csv [--modality both|image|audio]`."""
    from vitkit.workflows.fusion import run_fusion_eval

    refuse_options(ctx, EVAL_OPTIONS, "an image + audio bundle")
    options = ctx.params
    bundle, data, modality = options["bundle"], options["data"], options["modality"]
    result = run_fusion_eval(bundle, data, modality or "both", options["batch_size"],
                             progress=not options["quiet"])
    if options["json_out"]:
        print_json(result)
        return
    print_per_class(f"{bundle} on {data} ({result['split']}, {result['modality']}, "
                    f"n={result['n']})", result["per_class"])
    stderr_console.print(f"accuracy {result['accuracy']:.4f}  balanced accuracy "
                         f"{result['balanced_accuracy']:.4f}  ECE {result['ece']:.4f}")
    if result["n_without_input"]:
        stderr_console.print(f"{result['n_without_input']} rows without an "
                             f"{result['modality']} were left out")


def predict_fusion(ctx: typer.Context) -> None:
    """`vitkit predict BUNDLE --image X --audio Y`, or `vitkit predict BUNDLE PAIRS.csv`."""
    from vitkit.atomic import write_csv_atomic
    from vitkit.data.paired import PairedRow, read_paired_manifest
    from vitkit.workflows.fusion import run_fusion_predict

    refuse_options(ctx, PREDICT_OPTIONS, "an image + audio bundle")
    options = ctx.params
    bundle, paths = options["bundle"], list(options["paths"] or [])
    image, audio, csv_file = options["image"], options["audio"], options["csv_file"]

    if paths and (image is not None or audio is not None):
        raise DataError("give either --image/--audio (one example) or a manifest "
                        "(image,audio[,label] CSV), not both.")
    if paths:
        if len(paths) != 1 or Path(paths[0]).suffix.lower() != ".csv":
            raise DataError(f"an image + audio bundle predicts one example given with --image "
                            f"and/or --audio, or the rows of one CSV manifest with the header "
                            f"image,audio[,label]; got {', '.join(paths)}.")
        rows = read_paired_manifest(Path(paths[0]), need_labels=False)
    elif image is None and audio is None:
        raise DataError("nothing to predict: give --image FILE and/or --audio FILE.WAV, or a "
                        "CSV manifest with the header image,audio.")
    else:
        rows = [PairedRow(image=image, audio=audio, label=None)]
    records = run_fusion_predict(bundle, rows, options["top_k"], options["batch_size"])
    if csv_file is not None:
        write_csv_atomic(csv_file, ["image", "audio", "label", "score", "modality", "error"], (
            [r["image"] or "", r["audio"] or "", r.get("label", ""),
             f"{r['score']:.6f}" if "score" in r else "", r.get("modality", ""),
             r.get("error", "")] for r in records))
    if options["json_out"]:
        print_json(records)
    else:
        table = Table()
        for col in ("image", "audio", "label", "score"):
            table.add_column(col, overflow="fold", justify="right" if col == "score" else "left")
        width = path_width(40) // 2
        for r in records:
            names = [short_path(r[k], width) if r[k] else "-" for k in ("image", "audio")]
            if "error" in r:
                table.add_row(*names, f"[red]error[/]: {r['error']}", "")
            else:
                table.add_row(*names, r["label"], f"{r['score']:.3f}")
        stderr_console.print(table)
    failures = [(r["image"] or r["audio"], r["error"]) for r in records if "error" in r]
    if len(failures) == len(records):
        from vitkit.data.files import list_failures
        from vitkit.errors import NothingProcessedError

        raise NothingProcessedError(f"no example could be predicted ({list_failures(failures)})"
                                    ". Give readable images and PCM WAV recordings.")
    finish_items("predicted", len(records) - len(failures), failures)


def refuse_for_other_bundles(**given: object) -> None:
    """A clear error for the image + audio options (``--modality``, ``--image``,
    ``--audio``) given with a bundle of another task."""
    named = [f"--{name}" for name, value in given.items() if value is not None]
    if named:
        raise VitkitError(f"{', '.join(named)} {'applies' if len(named) == 1 else 'apply'} to "
                          "image + audio bundles (trained from an image,audio,label manifest) "
                          "only, and this bundle is not one. Drop "
                          f"{'it' if len(named) == 1 else 'them'}.")
