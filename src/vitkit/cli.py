"""The `vitkit` command: each verb is a thin call into the library.

Conventions: `--json` prints one JSON document on stdout; people get tables and progress bars on
stderr. Exit codes: 0 ok, 2 user error (a one-paragraph message, no traceback), 1 internal error.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vitkit.console import stderr_console
from vitkit.errors import VitkitError

app = typer.Typer(
    name="vitkit",
    help="From a folder of images to a light, fast and trustworthy vision model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
def train(
    data: Annotated[str, typer.Argument(help="Image folder (class-per-folder, or train/ val/ "
                                        "[test/] splits) or a CSV manifest path,label[,split].")],
    model: Annotated[str | None, typer.Option(help="timm name, hf:<org>/<model>, or a local "
                                              "Hugging Face folder. [default: efficientnet_lite0]")] = None,
    weights: Annotated[str | None, typer.Option(help="auto (offline registry, then hub), none "
                                                "(random init) or a .safetensors/state-dict file.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs over all stages together "
                                               "(split by the stage shares). [default: 10]")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder; the bundle goes to OUT/bundle. "
                                            "[default: runs/train]")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any training option; "
                                                "flags given here override it.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[default: 32]")] = None,
    seed: Annotated[int | None, typer.Option(help="[default: 0]")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda. [default: auto]")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32, bf16 or fp16 (auto: fp32 on "
                                                  "CPU, bf16/fp16 on CUDA).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last "
                                         "checkpoint.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a pretrained model on an image folder and write a bundle and a report.

    Stages: the head alone on cached backbone features, then the top blocks, then everything
    with layer-wise learning-rate decay. Every epoch is checkpointed; --resume continues a
    killed run. Bad images are skipped and listed in OUT/skipped.csv.
    """
    from vitkit.classify.config import TrainConfig
    from vitkit.config import load_config
    from vitkit.workflows.train import resolve_resume_config, run_training

    given = {"data": data, "model": model, "weights": weights, "epochs": epochs, "out": out,
             "batch_size": batch_size, "seed": seed, "device": device, "precision": precision}
    cfg = load_config(TrainConfig, config, given)
    if resume:
        changed = {k for k, v in given.items() if v is not None}
        cfg = resolve_resume_config(Path(cfg.out), cfg, changed)
    result = run_training(cfg, resume=resume, progress=not quiet)
    if json_out:
        _print_json(result.to_dict())
    else:
        stderr_console.print(
            f"[bold green]done[/]: val accuracy {result.val_accuracy:.3f} after "
            f"{result.epochs_run} epochs (best epoch {result.best_epoch})\n"
            f"  bundle: {result.bundle}\n  report: {result.report}"
        )


@app.command(name="eval")
def eval_(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `vitkit train`.")],
    data: Annotated[str, typer.Argument(help="Labelled images: uses test/ if present, else "
                                        "val/, else every image.")],
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Accuracy, balanced accuracy, per-class precision/recall/F1, confusion matrix, ECE."""
    from vitkit.workflows.evaluate import run_eval

    result = run_eval(bundle, data, batch_size=batch_size, progress=not quiet)
    if json_out:
        _print_json(result)
        return
    table = Table(title=f"{bundle} on {data} ({result['split']}, n={result['n']})")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for label, m in result["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                      str(m["support"]))
    stderr_console.print(table)
    stderr_console.print(f"accuracy {result['accuracy']:.4f}  balanced accuracy "
                         f"{result['balanced_accuracy']:.4f}  ECE {result['ece']:.4f}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched "
                                               "recursively) or globs such as 'imgs/*.jpg'.")],
    top_k: Annotated[int, typer.Option(help="How many classes to list per image.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Also write a CSV file.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Classify images; unreadable files are reported, never fatal."""
    from vitkit.classify.predict import Prediction, expand_paths, load

    predictor = load(bundle)
    files, missing = expand_paths(paths)
    results = [*missing, *predictor.predict_paths(files, top_k=top_k, batch_size=batch_size)]
    if csv_file is not None:
        with csv_file.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "score", "error"])
            for r in results:
                if isinstance(r, Prediction):
                    writer.writerow([r.path, r.label, f"{r.score:.6f}", ""])
                else:
                    writer.writerow([r.path, "", "", r.error])
    if json_out:
        _print_json([r.to_dict() for r in results])
        return
    table = Table()
    for col in ("path", "label", "score"):
        table.add_column(col)
    for r in results:
        if isinstance(r, Prediction):
            table.add_row(r.path, r.label, f"{r.score:.3f}")
        else:
            table.add_row(r.path, f"[red]error[/]: {r.error}", "")
    stderr_console.print(table)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `vitkit train`.")],
) -> None:
    """Write RUN_DIR/report.html: one self-contained page with metrics, curves, predictions."""
    from vitkit.report import write_report

    if not run_dir.is_dir():
        raise VitkitError(f"{run_dir} is not a folder; give the --out folder of a training run.")
    path = write_report(run_dir)
    stderr_console.print(f"report: {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes its run.")] = Path("demo-output"),
    epochs: Annotated[int, typer.Option(help="Training epochs (2/3 head, 1/3 top blocks).")] = 3,
) -> None:
    """Train efficientnet_lite0 on the embedded textile images, evaluate, predict, report."""
    from vitkit.workflows.demo import run_demo

    run_demo(out, epochs=epochs)


def main() -> None:
    """Entry point: user errors exit 2 with a message, never a traceback."""
    try:
        app(standalone_mode=False)
    except VitkitError as exc:
        stderr_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - click usage errors carry their own exit code
        usage_errors, aborts = _click_exception_types()
        if isinstance(exc, usage_errors):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, aborts):
            sys.exit(1)
        raise


def _click_exception_types() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """Usage-error and abort classes of click and of typer's vendored copy of click.

    Recent typer releases ship click as ``typer._click`` and no longer install click itself,
    so checking only ``click.exceptions`` turned every usage error into a traceback.
    """
    usage: list[type[Exception]] = []
    aborts: list[type[Exception]] = []
    try:
        import click
    except ImportError:
        pass
    else:
        usage.append(click.exceptions.ClickException)
        aborts.append(click.exceptions.Abort)
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:
        pass
    else:
        usage.append(VendoredClickException)
    aborts.append(typer.Abort)
    return tuple(usage), tuple(aborts)
