"""Features and logits in one pass, for OOD, drift and the feature view."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from tests.conftest import write_broken_images

from vitkit.data import scan
from vitkit.predictor.embed import embed_paths, embed_samples
from vitkit.predictor.predict import load


def test_embeddings_match_the_predictor_and_skip_broken_files(
        trained_bundles: dict[str, Path], tiny_image_folder: Path, tmp_path: Path) -> None:
    predictor = load(trained_bundles["cnn"])
    good = sorted((tiny_image_folder / "red").glob("*.png"))[:5]
    broken = write_broken_images(tmp_path)
    embedded = embed_paths(predictor, [*good, *broken], batch_size=2, progress=False)
    assert embedded.paths == [str(p) for p in good]
    assert {e.path for e in embedded.skipped} == {str(p) for p in broken}
    assert embedded.features.shape == (5, predictor.torch_model().num_features)
    batch = torch.stack([predictor.transform(Image.open(p).convert("RGB"))
                         for p in good])
    torch.testing.assert_close(embedded.logits, predictor(batch), atol=1e-4, rtol=1e-4)


def test_an_int8_variant_still_gives_fp32_features(trained_bundles: dict[str, Path],
                                                   tiny_image_folder: Path) -> None:
    samples = scan(tiny_image_folder).samples[:6]
    plain = embed_samples(load(trained_bundles["vit"]), samples, progress=False)
    quantized = load(trained_bundles["vit"], variant="torch-dynamic-int8")
    assert quantized.model is None
    assert plain.targets is not None and len(plain.targets) == 6
    torch.testing.assert_close(embed_samples(quantized, samples, progress=False).features,
                               plain.features)
