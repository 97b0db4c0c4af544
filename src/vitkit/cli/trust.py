"""`vitkit robustness`, `calibrate`, `ood fit|eval`, `drift`, `explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vitkit.cli.common import (
    JsonOpt,
    QuietOpt,
    app,
    finish_items,
    float_list,
    path_width,
    print_json,
    short_path,
)
from vitkit.console import stderr_console
from vitkit.errors import VitkitError


@app.command()
def robustness(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    data: Annotated[str, typer.Argument(help="Labelled images: uses test/ if present, else "
                                        "val/, else every image (as `vitkit eval`).")],
    variant: Annotated[str | None, typer.Option(
        help="Which variant is measured (openvino-int8, …); attacks are then crafted on the "
             "fp32 torch model and transferred. (default: torch-fp32)")] = None,
    noise: Annotated[str | None, typer.Option(
        help="Gaussian noise standard deviations, in [0,1] pixel units. "
             "(default: 0.02,0.05,0.1,0.2)")] = None,
    eps: Annotated[str, typer.Option(
        help="FGSM/PGD L-inf epsilons in 1/255 units; empty for no attacks. "
             "(default: 1,2,4,8)")] = "1,2,4,8",
    pgd_steps: Annotated[int, typer.Option(help="PGD steps (step size 2.5 eps/steps, random "
                                           "start). (default: 10)")] = 10,
    corruptions: Annotated[str | None, typer.Option(
        help="Comma-separated corruption families: noise, blur, jpeg, brightness, contrast. "
             "(default: all)")] = None,
    limit: Annotated[int, typer.Option(
        help="Most images used (a class-balanced, seeded subset). (default: 500)")] = 500,
    out: Annotated[Path | None, typer.Option(
        help="Folder for robustness.json and robustness.png. (default: the bundle's run "
             "folder when it sits in one, else none)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch. (default: 32)")] = 32,
    seed: Annotated[int, typer.Option(help="Seeds the subset, the noise and PGD's random "
                                      "start. (default: 0)")] = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Accuracy under Gaussian noise, blur, JPEG, brightness and contrast changes, and under
    FGSM and PGD attacks at several epsilons.

    Corruptions are applied to the resized, cropped pixels before normalisation and measured
    on the chosen variant (int8 robustness included). When the bundle sits in a training run
    folder, robustness.json and robustness.png are written there and its report re-rendered.
    """
    from vitkit.workflows.robustness import run_robustness

    families = None if corruptions is None else [c.strip() for c in corruptions.split(",")
                                                 if c.strip()]
    result = run_robustness(bundle, data, variant=variant, noise=float_list(noise, "--noise"),
                            epsilons=float_list(eps, "--eps") or [], pgd_steps=pgd_steps,
                            limit=limit, corruptions=families, out=out, batch_size=batch_size,
                            seed=seed, progress=not quiet)
    for note in result.notes:
        stderr_console.print(f"[yellow]note:[/] {note}", highlight=False)
    if json_out:
        print_json(result.to_dict())
        return
    table = Table(title=f"{bundle} ({result.variant}) on {data} ({result.split}, "
                        f"n={result.n}): clean accuracy {result.clean_accuracy:.3f}")
    for col in ("perturbation", "severity", "accuracy", "drop"):
        table.add_column(col, justify="left" if col == "perturbation" else "right")
    for c in result.corruptions:
        table.add_row(c.name, f"{c.severity:g}", f"{c.accuracy:.3f}", f"{c.drop:+.3f}")
    for a in result.adversarial:
        name = a.attack.upper() + (" (transferred)" if a.transferred else "")
        table.add_row(name, f"{a.epsilon:g}/255", f"{a.accuracy:.3f}", f"{a.drop:+.3f}")
    stderr_console.print(table)
    stderr_console.print(f"{result.seconds:.1f} s" + "".join(f"\n  wrote {f}"
                                                          for f in result.files))


@app.command()
def calibrate(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    data: Annotated[str | None, typer.Argument(
        help="Labelled images: their val/ split (plain class folders are split as training "
             "splits them). (default: the bundle's own validation split)")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for calibration.json and reliability.png. (default: the bundle's run "
             "folder when it sits in one, else none)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch. (default: 32)")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit temperature scaling on validation images and store it in the bundle.

    Predict and eval then report calibrated probabilities (softmax of logits / T); the
    predicted classes do not change. Shows ECE and NLL before and after.
    """
    from vitkit.workflows.calibration import run_calibrate

    result = run_calibrate(bundle, data, out=out, batch_size=batch_size, progress=not quiet)
    if json_out:
        print_json(result)
        return
    stderr_console.print(
        f"[bold green]calibrated[/] on {result['data']}: temperature "
        f"{result['temperature']:.3f}; ECE {result['ece_before']:.4f} -> "
        f"{result['ece_after']:.4f}; NLL {result['nll_before']:.4f} -> "
        f"{result['nll_after']:.4f} (accuracy {result['accuracy']:.3f}, unchanged)"
        + "".join(f"\n  wrote {f}" for f in result["files"]), highlight=False)




ood_app = typer.Typer(
    help="Out-of-distribution detection: fit a detector into a classifier bundle, evaluate it.",
    no_args_is_help=True,
)
app.add_typer(ood_app, name="ood")


@ood_app.command("fit")
def ood_fit(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    data: Annotated[str | None, typer.Argument(
        help="Labelled images, split as training splits them: statistics from train, the "
             "threshold from val. (default: the bundle's own training data)")] = None,
    method: Annotated[str, typer.Option(
        help="auto, msp, energy, mahalanobis, mahalanobis_norm, relative_mahalanobis, knn or "
             "vim; auto: knn for CNNs, mahalanobis_norm for ViTs. (default: auto)")] = "auto",
    accept: Annotated[float, typer.Option(
        help="Share of in-distribution validation images to accept. (default: 0.95)")] = 0.95,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch. (default: 32)")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit OOD statistics and a threshold into the bundle (`train` does this by default).

    From then on `predict` and every Predictor label images unlike the training data
    "unknown". Every method's threshold is recorded; only the chosen one is stored.
    """
    from vitkit.workflows.ood import run_ood_fit

    result = run_ood_fit(bundle, data, method=method, accept=accept, batch_size=batch_size,
                         progress=not quiet)
    if json_out:
        print_json(result.to_dict())
        return
    rough = " [yellow](rough: fewer than 20 val images)[/]" if result.rough else ""
    stderr_console.print(
        f"[bold green]OOD fitted[/]: {result.method} ({result.family}) on {result.fitted_on}; "
        f"threshold {result.threshold:.4g} accepts {result.accept_rate_val:.1%} of val"
        f"{rough}\n  bundle: {result.bundle}", highlight=False)


@ood_app.command("eval")
def ood_eval(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    in_data: Annotated[str, typer.Option(
        "--in", help="In-distribution images: the held-out val split when this is the "
                     "bundle's training data, else its test/ or val/ split, else all.")],
    ood_dir: Annotated[str | None, typer.Option(
        "--ood-dir", help="Out-of-distribution images: a folder, searched recursively, of "
                          "images the model should refuse. (--out is the older name of this "
                          "option and still works.)")] = None,
    out_dir: Annotated[str | None, typer.Option("--out", hidden=True)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch. (default: 32)")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """AUROC, FPR95 and accept rates of every OOD method on in- and out-of-distribution images.

    Each method is fitted on the bundle's training images and thresholded on its val split.
    """
    from vitkit.workflows.ood import run_ood_eval

    if ood_dir is not None and out_dir is not None and ood_dir != out_dir:
        raise VitkitError("--ood-dir and --out name the same thing (the out-of-distribution "
                          "images); give one of them.")
    out_dir = ood_dir or out_dir
    if out_dir is None:
        raise VitkitError("give the out-of-distribution images with --ood-dir FOLDER.")

    result = run_ood_eval(bundle, in_data, out_dir, batch_size=batch_size, progress=not quiet)
    if json_out:
        print_json(result)
        return
    table = Table(title=f"{bundle}: {result['n_in']} in ({result['in']}) vs {result['n_out']} "
                        f"out ({result['out']})")
    for col in ("method", "AUROC", "FPR95", "in accepted", "out refused"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, m in result["methods"].items():
        mark = " *" if name == result["selected"] else ""
        table.add_row(name + mark, f"{m['auroc']:.3f}", f"{m['fpr95']:.3f}",
                      f"{m['accept_rate']:.1%}", f"{m['refuse_rate_out']:.1%}")
    stderr_console.print(table)
    stored = result["stored"]
    stderr_console.print(
        f"* selected: {result['selected']}; best AUROC here: {result['best']}; thresholds "
        f"from the {result['threshold_from']}"
        + ("" if stored is None else f"\n  stored detector: accepts {stored['accept_rate']:.1%}"
           f" of in, refuses {stored['refuse_rate_out']:.1%} of out"), highlight=False)


@app.command()
def drift(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    new_data: Annotated[str, typer.Argument(help="New images (a folder searched "
                                            "recursively, a file or a glob); no labels "
                                            "needed.")],
    permutations: Annotated[int, typer.Option(
        min=10, help="Permutations of the feature test. (default: 500)")] = 500,
    alpha: Annotated[float, typer.Option(
        help="A test whose p-value is below this says drifted. (default: 0.01)")] = 0.01,
    seed: Annotated[int, typer.Option(help="(default: 0)")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch. (default: 32)")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare a batch of new images with the training data: share of OOD images, feature
    distance (MMD, permutation test) and predicted-class mix. Drifted when any test's p-value
    is below --alpha."""
    from vitkit.workflows.drift import run_drift

    result = run_drift(bundle, new_data, batch_size=batch_size, progress=not quiet,
                       permutations=permutations, alpha=alpha, seed=seed)
    if json_out:
        print_json(result)
        return
    feature, mix = result["feature_distance"], result["class_mix"]
    lines = [f"{result['n_new']} new images vs {result['reference']['rows']} reference rows"]
    if result["ood_share"] is not None:
        lines.append(f"  OOD share {result['ood_share']:.1%} (expected "
                     f"{result['expected_ood_share']:.1%}, p = {result['ood_p_value']:.3g})")
    lines.append(f"  feature MMD² {feature['statistic']:.4g} (p = {feature['p_value']:.3g})")
    lines.append(f"  class mix TVD {mix['tvd']:.3f} (p = {mix['p_value']:.3g}): " + ", ".join(
        f"{label} {share:.0%} (was {mix['reference'][label]:.0%})"
        for label, share in mix["new"].items()))
    verdict = ("[bold red]drifted[/]: " + "; ".join(result["reasons"]) if result["drifted"]
               else "[bold green]no drift detected[/]")
    stderr_console.print("\n".join([*lines, verdict]), highlight=False)


@app.command()
def explain(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched "
                                               "recursively) or globs such as 'imgs/*.jpg'.")],
    method: Annotated[str, typer.Option(
        help="auto, gradcam, gradcam++, rollout or attn-last (auto: gradcam for CNNs, rollout "
             "for ViTs); or a feature view: filters (the first convolution's filters, "
             "OUT/filters.png) or features (each image's strongest channels of --layer, "
             "OUT/<image>_features.png). (default: auto)")] = "auto",
    class_label: Annotated[str | None, typer.Option(
        "--class", help="Explain this class instead of the predicted one.")] = None,
    layer: Annotated[str | None, typer.Option(
        help="Grad-CAM target layer, a dotted module name such as layer4 or blocks.11.norm1 "
             "(default: the last feature map / the last block's first norm); for features, "
             "the layer shown (default: the last stage / the last block)")] = None,
    channels: Annotated[int, typer.Option(
        min=1, help="Features: how many of the layer's strongest channels (by mean square) "
                    "to show per image. (default: 16)")] = 16,
    discard_ratio: Annotated[float, typer.Option(
        help="Rollout: share of the lowest attention weights dropped per layer (0 keeps "
             "all). (default: 0.9)")] = 0.9,
    head_fusion: Annotated[str, typer.Option(
        help="Rollout and attn-last: mean, max or min over heads. (default: max)")] = "max",
    out: Annotated[Path, typer.Option(help="Folder for <image>.png overlays, <image>.npy maps, "
                                      "explanations.json and index.html. "
                                      "(default: runs/explain)")] = Path("runs/explain"),
    variant: Annotated[str | None, typer.Option(
        help="Variant whose predictions to explain; exported runtimes have no gradients, so "
             "the bundle's torch model explains them. (default: torch-fp32)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch. (default: 8)")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda. (default: cpu)")] = "cpu",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Heat maps of what the model looked at: Grad-CAM / Grad-CAM++ for CNNs, attention
    rollout for ViTs; unreadable files are reported, never fatal."""
    from vitkit.workflows.explain import explain_paths

    if head_fusion not in ("mean", "max", "min"):
        raise VitkitError(f"--head-fusion must be mean, max or min, not {head_fusion!r}.")
    result = explain_paths(bundle, paths, method=method, target_class=class_label, layer=layer,
                           out_dir=out, discard_ratio=discard_ratio,
                           head_fusion=head_fusion,  # type: ignore[arg-type]
                           variant=variant, device=device, batch_size=batch_size,
                           progress=not quiet and not json_out, channels=channels)
    for note in result.notes:
        stderr_console.print(f"[yellow]note:[/] {note}", highlight=False)
    failures = [(s.path, s.error) for s in result.skipped]
    if json_out:
        print_json(result.to_dict())
    elif result.filters is not None:
        stderr_console.print(f"{result.filters.shown} filters of {result.layer} in "
                             f"{result.filters.overlay}", highlight=False)
    elif result.method == "features":
        table = Table(title=f"features (layer {result.layer})")
        for col in ("path", "strongest channels", "overlay"):
            table.add_column(col)
        width = path_width(60)
        for v in result.features:
            table.add_row(short_path(v.path, width), ", ".join(map(str, v.channels[:8]))
                          + (" …" if len(v.channels) > 8 else ""), v.overlay.name)
        for path, error in failures:
            table.add_row(short_path(path, width), f"[red]error[/]: {error}", "")
        stderr_console.print(table)
        if result.features:
            stderr_console.print(f"feature grids and index.html in {result.out_dir}",
                                 highlight=False)
    else:
        where = f" (layer {result.layer})" if result.layer else ""
        table = Table(title=f"{result.method}{where}")
        for col in ("path", "predicted", "score", "explains", "overlay"):
            table.add_column(col, justify="right" if col == "score" else "left")
        width = path_width(60)
        for e in result.explanations:
            table.add_row(short_path(e.path, width), e.label, f"{e.score:.3f}", e.target,
                          Path(e.overlay).name)
        for path, error in failures:
            table.add_row(short_path(path, width), f"[red]error[/]: {error}", "", "", "")
        stderr_console.print(table)
        if result.explanations:
            stderr_console.print(f"overlays and index.html in {result.out_dir}",
                                 highlight=False)
    if result.filters is None:
        finish_items("explained", len(result.explanations) + len(result.features), failures)
