"""`vitkit quantize`: one quantized variant, measured, written into the bundle or refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitkit.compress.quantize import CALIBRATION_LIMIT, quantize_bundle
from vitkit.console import stderr_console


def run_quantize(bundle: Path | str, method: str | None = None, runtime: str | None = None,
                 calib: str | None = None, data: str | None = None, max_drop: float = 1.0,
                 calib_limit: int = CALIBRATION_LIMIT, batch_size: int = 32,
                 tome: int = 0, image_size: int | None = None, progress: bool = True
                 ) -> dict[str, Any]:
    """Returns the `quantize --json` document: bundle, variant, runtime, precision, accuracy,
    reference_accuracy, accuracy_drop (points), agreement (top-1 vs fp32), size_mb, file,
    plus method, max_drop, max_abs_diff, n_images, calibration_images, refused, notes.

    Raises:
        QuantizationRefused: the accuracy drop exceeded ``max_drop`` (its ``details`` hold the
            same document with ``refused: true`` and the message); nothing was written.
    """
    def log(message: str) -> None:
        if progress:
            stderr_console.print(f"[dim]{message}[/]", highlight=False)

    result = quantize_bundle(bundle, method=method, runtime=runtime, calib=calib, data=data,
                             max_drop=max_drop, calib_limit=calib_limit, batch_size=batch_size,
                             tome=tome, image_size=image_size, log=log)
    for note in result.notes:
        stderr_console.print(f"[yellow]note:[/] {note}", highlight=False)
    return result.to_dict()
