"""Moved to :mod:`vitkit.predictor.variants`; this name is kept so that older imports work."""

import sys

from vitkit.predictor import variants as _moved

sys.modules[__name__] = _moved
