"""Moved to :mod:`vitkit.predictor.tta`; this name is kept so that older imports work."""

import sys

from vitkit.predictor import tta as _moved

sys.modules[__name__] = _moved
