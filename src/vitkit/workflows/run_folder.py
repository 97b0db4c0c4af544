"""Where commands that measure a bundle after training leave their files: its run folder."""

from __future__ import annotations

from pathlib import Path

SUMMARY_FILE = "summary.json"


def run_folder_of(bundle: Path | str) -> Path | None:
    """The run folder a bundle sits in (``vitkit train --out RUN`` writes ``RUN/bundle`` and
    ``RUN/summary.json``), or None for a bundle kept anywhere else."""
    parent = Path(bundle).resolve().parent
    return parent if (parent / SUMMARY_FILE).is_file() else None


def refresh_report(run_dir: Path) -> Path | None:
    """Re-renders ``run_dir/report.html`` when the run folder has one, so new files show up."""
    if not (run_dir / "report.html").is_file():
        return None
    from vitkit.report import write_report

    return write_report(run_dir)
