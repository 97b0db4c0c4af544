"""Moved to :mod:`vitkit.predictor.runtimes`; this name is kept so that older imports work."""

import sys

from vitkit.predictor import runtimes as _moved

sys.modules[__name__] = _moved
