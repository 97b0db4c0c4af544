"""Continual learning's parts: the class-balanced exemplar memory kept in a bundle, the head
that grows with new classes, rehearsal at a fixed share, and Learning without Forgetting."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from tests.conftest import make_image_folder

from vitkit.backbones.model import ImageClassifier
from vitkit.classify.continual import LwFHook, ReplayDataset, load_with_grown_head
from vitkit.classify.engine import TrainBatch
from vitkit.data.exemplars import (
    Exemplar,
    class_quotas,
    read_memory,
    select_exemplars,
    write_memory,
)
from vitkit.errors import BundleError


def _exemplars(counts: dict[str, int]) -> list[Exemplar]:
    return [Exemplar(Path(f"/d/{label}/{i}.png"), label)
            for label, n in counts.items() for i in range(n)]


def test_the_memory_is_class_balanced_and_does_not_depend_on_order() -> None:
    assert class_quotas(["a", "b", "c"], 10) == {"a": 4, "b": 3, "c": 3}
    candidates = _exemplars({"a": 50, "b": 50, "c": 2})
    chosen = select_exemplars(candidates, ["a", "b", "c"], 10, seed=3)
    assert Counter(e.label for e in chosen) == {"a": 4, "b": 3, "c": 2}  # c keeps all it has
    again = select_exemplars(list(reversed(candidates)), ["a", "b", "c"], 10, seed=3)
    assert sorted(map(str, (e.path for e in chosen))) == sorted(map(str, (e.path
                                                                          for e in again)))
    other = select_exemplars(candidates, ["a", "b", "c"], 10, seed=4)
    assert {e.path for e in other} != {e.path for e in chosen}


def test_the_memory_round_trips_through_a_bundle_folder(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", ("red", "blue"), per_class=3, size=80)
    broken = data / "red" / "broken.png"
    broken.write_bytes(b"not an image")
    exemplars = [Exemplar(p, p.parent.name) for p in sorted(data.rglob("*.png"))]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    record = write_memory(bundle, exemplars, max_side=40, seed=0, capacity=10,
                          max_pixels=10**6)
    assert record["images"] == 6 and record["skipped"] == 1
    assert record["per_class"] == {"blue": 3, "red": 3}
    read = read_memory(bundle, record)
    assert Counter(e.label for e in read) == {"blue": 3, "red": 3}
    for item in read:
        assert item.path.parent == bundle / "memory"
        assert max(Image.open(item.path).size) == 40  # 80 px capped to 40
    # written again: replaced as a whole, nothing of the old memory left behind
    write_memory(bundle, exemplars[:2], max_side=40, seed=0, capacity=2, max_pixels=10**6)
    assert len(list((bundle / "memory").glob("*.jpg"))) == 2
    assert [p.name for p in bundle.iterdir()] == ["memory"]
    with pytest.raises(BundleError, match="outside|absolute|not a file"):
        read_memory(bundle, {"dir": "../elsewhere"})


def _tiny(classes: int, seed: int) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(timm.create_model("test_resnet", pretrained=False,
                                             num_classes=classes), "timm").eval()


def test_a_grown_head_keeps_the_old_logits_exactly_and_starts_new_classes_at_zero() -> None:
    old = _tiny(3, seed=0)
    grown = _tiny(5, seed=1)
    assert load_with_grown_head(grown, old.model.state_dict()) == 3
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before, after = old(images), grown(images)
    torch.testing.assert_close(after[:, :3], before, rtol=0, atol=1e-6)
    assert torch.count_nonzero(after[:, 3:]) == 0


def test_rehearsal_takes_its_share_of_each_epoch() -> None:
    new = torch.utils.data.TensorDataset(torch.zeros(70, 1), torch.zeros(70))
    memory = torch.utils.data.TensorDataset(torch.ones(500, 1), torch.arange(500.0))
    replay = ReplayDataset(new, memory, ratio=0.3)
    assert len(replay) == 100  # 30 of 100 items are rehearsal
    torch.manual_seed(0)
    drawn = [replay[i][1].item() for i in range(70, 100)]
    torch.manual_seed(0)
    assert [replay[i][1].item() for i in range(70, 100)] == drawn  # seeded: resume replays it
    assert len(set(drawn)) > 20  # fresh draws over the whole memory, not its first items
    assert len(ReplayDataset(new, memory, ratio=0.0)) == 70


def test_lwf_adds_nothing_while_the_old_classes_answer_as_before() -> None:
    old = _tiny(3, seed=0)
    new = _tiny(5, seed=1)
    load_with_grown_head(new, old.model.state_dict())
    hook = LwFHook(old, old_classes=3, weight=1.0, temperature=2.0)
    images, targets = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 3])
    batch = TrainBatch("full", images, targets, None, torch.arange(6))
    logits = new(images)
    loss, returned = hook(logits, batch)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets))
    assert returned is logits
    with torch.no_grad():  # move the new model: the distillation term appears, computed by hand
        new.head.weight[:3] += 0.5 * torch.randn_like(new.head.weight[:3])
    logits = new(images)
    loss, _ = hook(logits, batch)
    with torch.no_grad():
        teacher = F.softmax(old(images) / 2, dim=1)
    kl = (teacher * (teacher.log() - F.log_softmax(logits[:, :3] / 2, dim=1))).sum(1).mean()
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets) + 4 * kl)


def test_a_windowed_models_memory_is_kept_rendered_and_read_back_as_it_is(
        tmp_path: Path) -> None:
    """16-bit images through a window 1000:2000 (500..1500 → 0..255): the memory keeps the
    rendering, lossless, and says it was rendered so no one windows it twice."""
    import numpy as np

    from vitkit.data.intensity import IntensitySpec

    raw = tmp_path / "ct16.png"
    Image.fromarray(np.full((20, 30), 1000, dtype=np.uint16)).save(raw)  # the window's middle
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = IntensitySpec(windows=["1000:2000"])
    record = write_memory(bundle, [Exemplar(raw, "a")], max_side=64, seed=0, capacity=1,
                          max_pixels=10**6, intensity=spec)
    assert record["rendered"] == spec.model_dump(mode="json")
    (kept,) = read_memory(bundle, record)
    assert kept.rendered and kept.path.suffix == ".png"
    assert np.asarray(Image.open(kept.path).convert("RGB")).mean() == pytest.approx(127.5, abs=1)
    again = write_memory(bundle, [kept], max_side=64, seed=0, capacity=1, max_pixels=10**6,
                         intensity=spec)  # a rendered exemplar is copied, not windowed again
    (copy,) = read_memory(bundle, again)
    assert np.asarray(Image.open(copy.path)).mean() == pytest.approx(127.5, abs=1)


def test_class_weights_count_what_an_epoch_sees() -> None:
    """70 new images of two classes, a memory of 4 exemplars of two old classes at ratio 0.3:
    an epoch draws 30 exemplars, so each old class counts ~15, not 2 (which the engine's
    balanced weights would turn into a 7x weight on top of the oversampling)."""
    from vitkit.data.layouts import Sample

    class Listed(torch.utils.data.Dataset):
        def __init__(self, labels: list[str]) -> None:
            self.samples = [Sample(Path(f"/x/{i}.png"), label, "train")
                            for i, label in enumerate(labels)]

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, i: int) -> str:
            return self.samples[i].label

    replay = ReplayDataset(Listed(["n1"] * 35 + ["n2"] * 35), Listed(["o1", "o2"] * 2), 0.3)
    counts = Counter(s.label for s in replay.samples)
    assert counts == {"n1": 35, "n2": 35, "o1": 15, "o2": 15}
