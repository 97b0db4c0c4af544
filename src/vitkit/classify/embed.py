"""Moved to :mod:`vitkit.predictor.embed`; this name is kept so that older imports work."""

import sys

from vitkit.predictor import embed as _moved

sys.modules[__name__] = _moved
