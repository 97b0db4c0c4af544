"""`run_robustness` on a tiny trained bundle: identities, drops, transfer flag and files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from vitkit.errors import ConfigError
from vitkit.workflows.robustness import run_robustness


def test_identities_drops_and_the_result_document(fresh_bundle: Callable[[str], Path],
                                                  tiny_image_folder: Path) -> None:
    # A copy outside any run folder: nothing is written without --out.
    result = run_robustness(fresh_bundle("cnn"), str(tiny_image_folder), noise=[0.0, 0.3],
                            epsilons=[0.0, 32.0], pgd_steps=2, limit=9,
                            corruptions=["noise", "brightness"], progress=False)
    assert result.n == 9 and result.split == "all" and result.variant == "torch-fp32"
    by_setting = {(c.name, c.severity): c for c in result.corruptions}
    assert set(by_setting) == {("noise", 0.0), ("noise", 0.3), ("brightness", 0.5),
                               ("brightness", 1.5)}
    assert by_setting["noise", 0.0].accuracy == result.clean_accuracy  # sigma 0: identity
    attacks = {(a.attack, a.epsilon): a for a in result.adversarial}
    assert set(attacks) == {("fgsm", 0.0), ("pgd", 0.0), ("fgsm", 32.0), ("pgd", 32.0)}
    assert attacks["fgsm", 0.0].accuracy == attacks["pgd", 0.0].accuracy == result.clean_accuracy
    for score in [*result.corruptions, *result.adversarial]:
        assert score.drop == pytest.approx(result.clean_accuracy - score.accuracy)
    assert not any(a.transferred for a in result.adversarial)
    assert result.files == [] and result.notes == []
    document = result.to_dict()
    assert {"clean_accuracy", "n", "variant", "corruptions", "adversarial", "seconds"} <= set(
        document)
    assert set(document["corruptions"][0]) == {"name", "severity", "accuracy", "drop"}
    assert set(document["adversarial"][0]) == {"attack", "epsilon", "accuracy", "drop",
                                               "transferred"}


def test_another_variant_gets_transferred_attacks_and_files_go_to_the_run_folder(
        fresh_bundle: Callable[[str], Path], tiny_image_folder: Path) -> None:
    bundle = fresh_bundle("vit")
    run_dir = bundle.parent
    (run_dir / "summary.json").write_text("{}")  # the bundle now sits in a run folder
    result = run_robustness(bundle, str(tiny_image_folder), variant="torch-dynamic-int8",
                            epsilons=[4.0], pgd_steps=1, limit=6, corruptions=["jpeg"],
                            progress=False)
    assert result.variant == "torch-dynamic-int8"
    assert [c.severity for c in result.corruptions] == [75, 50, 25, 10]
    assert all(a.transferred for a in result.adversarial) and result.notes
    assert result.files[:2] == [str(run_dir / "robustness.json"),
                                str(run_dir / "robustness.png")]
    written = json.loads((run_dir / "robustness.json").read_text())
    assert written["clean_accuracy"] == result.clean_accuracy
    assert (run_dir / "robustness.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("options", "message"), [
    ({"corruptions": ["fog"]}, "unknown corruption"),
    ({"epsilons": [300.0]}, "1/255"),
    ({"noise": [2.0]}, "pixel units"),
    ({"pgd_steps": 0}, "pgd-steps"),
])
def test_bad_options_fail_before_any_work(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        run_robustness(tmp_path / "no-bundle", str(tmp_path), progress=False, **options)
