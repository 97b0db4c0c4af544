"""Reports of a training run: plots and a self-contained HTML page (IO at the edge)."""

from __future__ import annotations

from vitkit.report.html import write_report
from vitkit.report.plots import plot_confusion_matrix, plot_learning_curves

__all__ = ["plot_confusion_matrix", "plot_learning_curves", "write_report"]
