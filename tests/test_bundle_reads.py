"""A bundle is read once: loading it reads ``vitkit.json`` one time, whatever layers it passes.

Before :class:`vitkit.bundle.Bundle`, each layer re-read the file from the path it was given:
``vitkit.load`` read it twice (the Predictor, then the OOD detector on first use), a served
model 5 times (its own check, the version hash, the Predictor, the OOD detector, the drift
reference), ``vitkit optimize`` with nothing to build 4 times (its checks, the candidate list,
the benchmark, the write of its choice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vitkit
from vitkit.benchmark import QUICK
from vitkit.bundle import META_FILE, Bundle
from vitkit.serve.config import ServeConfig
from vitkit.serve.served import ServedModel
from vitkit.workflows.optimize import run_optimize


@pytest.fixture
def meta_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every read of a ``vitkit.json``, as the path read (``read_bytes`` or ``read_text``;
    both go through ``Path.open``, which is not counted again)."""
    reads: list[str] = []

    def counted(original: Callable[..., Any]) -> Callable[..., Any]:
        def read(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self.name == META_FILE:
                reads.append(str(self))
            return original(self, *args, **kwargs)
        return read

    for name in ("read_bytes", "read_text"):
        monkeypatch.setattr(Path, name, counted(getattr(Path, name)))
    yield reads


def test_vitkit_load_reads_the_bundle_once(trained_bundles: dict[str, Path],
                                           meta_reads: list[str]) -> None:
    predictor = vitkit.load(trained_bundles["cnn"])
    assert predictor.ood is not None  # the OOD fit is loaded too, from the same reading
    assert len(meta_reads) == 1, meta_reads


def test_a_served_model_reads_the_bundle_once(trained_bundles: dict[str, Path],
                                              meta_reads: list[str]) -> None:
    served = ServedModel.load("m", trained_bundles["cnn"])
    served.warm((1,))
    assert served.drift_monitor(ServeConfig.model_fields["drift"].default) is not None
    assert len(meta_reads) == 1, meta_reads


def test_a_bundle_object_is_accepted_where_a_path_is(trained_bundles: dict[str, Path],
                                                     meta_reads: list[str]) -> None:
    bundle = Bundle.open(trained_bundles["vit"])
    predictor = vitkit.load(bundle)
    served = ServedModel.load("m", bundle)
    assert served.labels == predictor.labels == bundle.meta.labels
    assert len(meta_reads) == 1, meta_reads


def test_optimize_reads_the_bundle_once_besides_the_write_of_its_choice(
        fresh_bundle: Callable[[str], Path], meta_reads: list[str]) -> None:
    bundle = fresh_bundle("cnn")
    result = run_optimize(bundle, candidates=["torch-bf16"], budget=QUICK)
    assert result.candidates[0].status == "ok"
    # One reading for the checks, the candidate list and the benchmark; update_meta reads the
    # file again to rewrite it (a build in between would make the benchmark read it anew).
    assert len(meta_reads) == 2, meta_reads
