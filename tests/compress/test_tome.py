"""Token merging: the pure bipartite matching, and a patched tiny ViT."""

from __future__ import annotations

import pytest
import timm
import torch

from vitkit.compress.tome import apply_tome, bipartite_soft_matching, find_vit, merge_weighted
from vitkit.errors import VitkitError


def test_two_identical_tokens_merge_into_their_size_weighted_mean() -> None:
    # cls, then A/B alternate: A = tokens 1, 3; B = tokens 2, 4. Token 3 (A) equals token 4 (B).
    tokens = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    size = torch.tensor([[[1.0], [1.0], [1.0], [1.0], [3.0]]])
    values = torch.tensor([[[5.0], [10.0], [20.0], [2.0], [4.0]]])
    merge = bipartite_soft_matching(tokens, r=1, protected=1)
    merged, new_size = merge_weighted(merge, values, size)
    assert merged.shape == (1, 4, 1)
    # order: protected, unmerged A (token 1), then B (token 2, token 4 merged with token 3)
    assert new_size.flatten().tolist() == [1.0, 1.0, 1.0, 4.0]
    assert float(new_size.sum()) == float(size.sum())
    assert merged.flatten().tolist() == pytest.approx([5.0, 10.0, 20.0, (2.0 * 1 + 4.0 * 3) / 4])


def test_the_protected_token_is_never_merged_and_r_is_clipped() -> None:
    tokens = torch.ones(2, 5, 3)  # everything identical: any pair could merge
    merge = bipartite_soft_matching(tokens, r=10, protected=1)
    out = merge(torch.arange(5.0).view(1, 5, 1).expand(2, 5, 1))
    assert out.shape == (2, 3, 1)  # 4 free tokens: at most 2 merge
    assert out[:, 0].flatten().tolist() == [0.0, 0.0]


def _reference_merge(metric: torch.Tensor, x: torch.Tensor, r: int, protected: int
                     ) -> torch.Tensor:
    """ToMe as the paper's code writes it (strided A/B split, scatter_add): the merge must
    equal it, whatever ops the export-friendly version uses."""
    free = metric[:, protected:] / metric[:, protected:].norm(dim=-1, keepdim=True)
    best, partner = (free[:, ::2] @ free[:, 1::2].transpose(-1, -2)).max(dim=-1)
    order = best.argsort(dim=-1, descending=True)[..., None]
    head, rest = x[:, :protected], x[:, protected:]
    src, dst = rest[:, ::2], rest[:, 1::2]
    batch, n_a, channels = src.shape
    kept = src.gather(1, order[:, r:].expand(batch, n_a - r, channels))
    moved = src.gather(1, order[:, :r].expand(batch, r, channels))
    to = partner[..., None].gather(1, order[:, :r])
    return torch.cat([head, kept, dst.scatter_add(1, to.expand(batch, r, channels), moved)], 1)


@pytest.mark.parametrize(("tokens", "r", "protected"), [(197, 8, 1), (185, 13, 1), (50, 5, 2)])
def test_the_merge_equals_the_papers_formulation(tokens: int, r: int, protected: int) -> None:
    generator = torch.Generator().manual_seed(tokens)
    metric = torch.randn(3, tokens, 16, generator=generator)
    x = torch.randn(3, tokens, 8, generator=generator)
    merged = bipartite_soft_matching(metric, r, protected)(x)
    assert merged.shape == (3, tokens - r, 8)
    torch.testing.assert_close(merged, _reference_merge(metric, x, r, protected))


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, num_classes=3).eval()


def test_r0_gives_the_unpatched_outputs(vit: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        assert torch.allclose(apply_tome(vit, 0)(x), vit(x), atol=1e-6, rtol=0)


def test_each_block_drops_r_tokens_and_outputs_stay_close(vit: torch.nn.Module) -> None:
    r, x = 8, torch.randn(4, 3, 160, 160)
    patched = apply_tome(vit, r)
    seen: list[int] = []
    for block in find_vit(patched).blocks:
        block.mlp.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[1]))
    with torch.inference_mode():
        out, expected = patched(x), vit(x)
    start = 1 + 100  # class token + 10x10 patches
    assert seen == [start - r * (i + 1) for i in range(len(seen))]
    assert torch.isfinite(out).all()
    assert (out.argmax(1) == expected.argmax(1)).float().mean() >= 0.75
    assert len(find_vit(vit).blocks[0].mlp._forward_hooks) == 0  # the original is untouched


def test_cnns_are_refused_with_a_clear_message() -> None:
    cnn = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    with pytest.raises(VitkitError, match="needs a Vision Transformer"):
        apply_tome(cnn, 4)
