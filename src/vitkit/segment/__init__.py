"""Semantic segmentation: an smp decoder on a timm encoder (:mod:`~vitkit.segment.model`), its
loss (:mod:`~vitkit.segment.loss`), Dice and IoU (:mod:`~vitkit.segment.metrics`), a bundle's
masks for images (:mod:`~vitkit.segment.predict`) and its evaluation on image/mask pairs
(:mod:`~vitkit.segment.evaluate`).

The modules are imported one by one (``from vitkit.segment.model import …``): this package
pulls in segmentation-models-pytorch only where a model is built.
"""
