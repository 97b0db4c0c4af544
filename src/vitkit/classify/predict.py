"""Moved to :mod:`vitkit.predictor.predict`; this name is kept so that older imports work."""

import sys

from vitkit.predictor import predict as _moved

sys.modules[__name__] = _moved
