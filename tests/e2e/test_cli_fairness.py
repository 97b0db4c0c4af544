"""`vitkit eval --groups CSV`: fairness in the JSON, on stderr, and in --out/fairness.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.e2e.cli import run_cli

from vitkit.console import stderr_console
from vitkit.workflows.evaluate import run_eval
from vitkit.workflows.fairness import print_fairness


def write_groups(data: Path, out: Path, column: str = "group", skip: int | None = None) -> Path:
    """Images alternate between sites north/south (``skip``: one image left out), plus a row
    for an image that does not exist."""
    images = sorted(data.rglob("*.png"))
    rows = [f"{p.relative_to(data)},{'north' if i % 2 else 'south'}"
            for i, p in enumerate(images) if i != skip]
    out.write_text(f"path,{column}\n" + "\n".join(rows) + "\nred/ghost.png,north\n")
    return out


def test_eval_groups_json_and_file(trained_bundles: dict[str, Path], tiny_image_folder: Path,
                                   tmp_path: Path) -> None:
    groups = write_groups(tiny_image_folder, tmp_path / "sites.csv", "site")
    done = run_cli("eval", trained_bundles["cnn"], tiny_image_folder, "--groups", groups,
                   "--group-column", "site", "--out", tmp_path / "run", "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    fairness = result["fairness"]
    assert fairness["attribute"] == "site"
    assert set(fairness["groups"]) == {"north", "south"}
    assert fairness["n"] == result["n"] == 36
    assert fairness["unmatched"]["rows"] == 1 and fairness["unmatched"]["images"] == 0
    # Every image has a group, so the groups' accuracies average back to the overall one.
    groups = fairness["groups"].values()
    assert sum(g["n"] for g in groups) == 36
    assert sum(g["n"] * g["accuracy"] for g in groups) / 36 == pytest.approx(result["accuracy"])
    spreads = [abs(fairness["groups"]["north"]["selection_rate"][c]
                   - fairness["groups"]["south"]["selection_rate"][c]) for c in result["labels"]]
    assert fairness["demographic_parity_difference"] == pytest.approx(max(spreads))
    assert json.loads((tmp_path / "run" / "fairness.json").read_text()) == fairness


def test_human_table_names_gaps_and_unmatched(trained_bundles: dict[str, Path],
                                              tiny_image_folder: Path, tmp_path: Path) -> None:
    groups = write_groups(tiny_image_folder, tmp_path / "g.csv", skip=0)
    result = run_eval(trained_bundles["cnn"], str(tiny_image_folder), progress=False,
                      groups=groups, min_group_size=20)
    with stderr_console.capture() as captured:
        print_fairness(result["fairness"])
    text = " ".join(captured.get().split())
    assert "fairness by group (n=35)" in text
    assert "(too few)" in text  # 17 and 18 images, below 20
    assert "fewer than two groups have 20 or more images" in text
    assert "1 CSV row(s) matched no image; 1 evaluated image(s) have no group" in text


def test_eval_bad_groups_csv_is_a_user_error(trained_bundles: dict[str, Path],
                                             tiny_image_folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,group\nred/red_000.png,north\nred/red_001.png\n")
    done = run_cli("eval", trained_bundles["cnn"], tiny_image_folder, "--groups", bad, "--json")
    assert done.returncode == 2
    assert "line 3" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
