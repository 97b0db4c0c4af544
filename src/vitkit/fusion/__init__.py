"""Image + audio classification: log-mel audio, a timm image backbone, late fusion with
modality dropout (see :mod:`vitkit.fusion.model`)."""
