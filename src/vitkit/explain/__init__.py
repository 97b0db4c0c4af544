"""Why the model decided: Grad-CAM, Grad-CAM++ and attention rollout, drawn over the image.

``Explainer(model, input_size, method)`` maps batches of preprocessed images; the math lives in
:mod:`~vitkit.explain.gradcam` and :mod:`~vitkit.explain.rollout` (pure tensor functions), layer
choice and attention capture in :mod:`~vitkit.explain.targets`, drawing in
:mod:`~vitkit.explain.overlay`. Files and the CLI are in :mod:`vitkit.workflows.explain`.
"""

from vitkit.explain.explainer import METHODS, BatchExplanation, Explainer, choose_method
from vitkit.explain.overlay import model_view, overlay_map, peak_location, upsample_map

__all__ = [
    "METHODS",
    "BatchExplanation",
    "Explainer",
    "choose_method",
    "model_view",
    "overlay_map",
    "peak_location",
    "upsample_map",
]
