"""The feature-map trust step: t-SNE of the validation features into the run folder."""

from __future__ import annotations

from vitkit.console import stderr_console
from vitkit.errors import VitkitError
from vitkit.report.feature_map import MIN_POINTS, compute_feature_map, write_feature_map
from vitkit.workflows.trust_context import TrustContext


def feature_map_step(context: TrustContext) -> None:
    """Writes ``feature_map.png`` and ``feature_map.json`` from ``context.embeddings("val")``.

    Raises:
        VitkitError: Fewer than five validation images (t-SNE would show nothing).
    """
    embeddings = context.embeddings("val")
    if len(embeddings) < MIN_POINTS or embeddings.targets is None:
        raise VitkitError(f"{len(embeddings)} validation image(s): a feature map needs at least "
                          f"{MIN_POINTS}. Add validation images (or raise val_fraction) to get "
                          "one.")
    feature_map = compute_feature_map(embeddings.features.numpy(), embeddings.targets.numpy(),
                                      embeddings.logits.argmax(1).numpy(),
                                      seed=context.config.seed)
    write_feature_map(context.run_dir, feature_map, context.predictor.labels, embeddings.paths)
    if context.progress:
        stderr_console.print(
            f"feature map: t-SNE of {len(feature_map.points)} validation images, "
            f"{feature_map.knn_purity:.0%} of 2-D neighbours share their class")
