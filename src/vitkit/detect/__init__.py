"""Object detection: torchvision's FCOS, RetinaNet and Faster R-CNN on a timm backbone with an
FPN (:mod:`~vitkit.detect.model`), COCO mAP (:mod:`~vitkit.detect.metrics`), the exportable
graph and its decoding (:mod:`~vitkit.detect.graph`, :mod:`~vitkit.detect.export`), and a
loaded bundle's predictions and overlays (:mod:`~vitkit.detect.predict`)."""
