"""`vitkit --version` and `vitkit version`: the versions a bug report needs, as text and JSON."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch
from tests.e2e.cli import run_cli

from vitkit.cli import version as version_cli
from vitkit.version import __version__


def test_dash_dash_version_prints_the_version_and_exits_0() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"vitkit {__version__}\n"


def test_version_json_lists_vitkit_python_packages_and_cuda() -> None:
    result = run_cli("version", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["vitkit"] == __version__
    assert set(version_cli.PACKAGES) <= found.keys() and {"python", "platform"} <= found.keys()
    assert found["torch"] == metadata.version("torch") and found["timm"] == metadata.version("timm")
    assert found["cuda"]["available"] == torch.cuda.is_available()
    assert found["cuda"]["version"] == torch.version.cuda
    assert isinstance(found["cuda"]["devices"], list)


def test_version_table_names_every_package(capsys: pytest.CaptureFixture[str]) -> None:
    version_cli.version_command(as_json=False)
    table = capsys.readouterr().err
    for name in ("vitkit", "python", *version_cli.PACKAGES, "cuda"):
        assert name in table


def test_a_runtime_that_is_not_installed_is_null(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version

    def without_openvino(name: str) -> str:
        if name == "openvino":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(version_cli.metadata, "version", without_openvino)
    found = version_cli.versions()
    assert found["openvino"] is None and found["torch"] == real("torch")
