"""Domain-adversarial training's parts (classify/domain.py), on hand-checked numbers and on
tiny real models: the gradient reversal, the λ schedule, the domain head, the loss hook on a
CNN and a ViT, the seeded target batches and the probes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vitkit.backbones import create
from vitkit.classify.domain import (
    DannLoss,
    DomainHead,
    TargetBatches,
    dann_lambda,
    domain_accuracy,
    probe_domain_accuracy,
    reverse_gradient,
)
from vitkit.classify.engine import TrainBatch


def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_backward() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 5, dtype=torch.float64)

    def f(z: torch.Tensor) -> torch.Tensor:
        return (torch.sin(z) * weights).sum()

    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    f(y).backward()
    assert x.grad is not None
    # The gradient of f without the layer, by central differences, element by element.
    numeric = torch.zeros_like(x)
    step = 1e-6
    with torch.no_grad():
        for i in range(x.numel()):
            bump = torch.zeros(x.numel(), dtype=torch.float64)
            bump[i] = step
            bump = bump.view_as(x)
            numeric.view(-1)[i] = (f(x + bump) - f(x - bump)) / (2 * step)
    torch.testing.assert_close(x.grad, -0.3 * numeric, rtol=1e-6, atol=1e-8)


def test_the_dann_schedule_by_hand() -> None:
    assert dann_lambda(0.0) == 0.0
    # 2 / (1 + e^-5) - 1 and 2 / (1 + e^-10) - 1
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + 0.006737947) - 1, abs=1e-9)
    assert dann_lambda(0.5) == pytest.approx(0.986614298, abs=1e-9)
    assert dann_lambda(1.0) == pytest.approx(0.999909204, abs=1e-9)
    assert dann_lambda(-1.0) == 0.0 and dann_lambda(2.0) == dann_lambda(1.0)


def test_the_domain_head_is_the_guides_mlp() -> None:
    head = DomainHead(48)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    first, dropout, last = head[0], head[2], head[3]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    assert isinstance(dropout, nn.Dropout)
    assert (first.in_features, first.out_features) == (48, 256)
    assert (last.in_features, last.out_features) == (256, 2)
    assert dropout.p == 0.5
    assert head(torch.randn(7, 48)).shape == (7, 2)


def _targets(n: int = 12, size: int = 32, batch: int = 4, steps_per_epoch: int = 3
             ) -> TargetBatches:
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    return TargetBatches(TensorDataset(images), batch, steps_per_epoch, seed=0)


@pytest.mark.parametrize("name", ["test_resnet", "vit_tiny_patch16_224"])
def test_the_hook_adds_a_reversed_domain_loss_on_the_features_the_head_sees(name: str) -> None:
    """On a tiny CNN and a tiny ViT: the features read before the head are the pooled / class
    token embedding; the loss is CE + weight x domain CE; the backbone's gradient is that of
    CE - weight x λ x domain CE (reversed), the domain head's that of + weight x domain CE."""
    kwargs = {"img_size": 32} if name.startswith("vit") else {}
    torch.manual_seed(0)
    model = create(name, num_classes=3, weights="none", timm_kwargs=kwargs).model.eval()
    source = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0])
    targets = _targets()

    def cross_entropy(logits: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        return F.cross_entropy(logits, batch.targets)

    hook = DannLoss(model, cross_entropy, targets, total_steps=10, weight=0.7)
    hook.trainable.eval()  # no dropout: the manual computation below must see the same head
    hook.trainable.get_buffer("steps").fill_(5)  # p = 0.5
    strength = dann_lambda(0.5)
    assert hook.strength == pytest.approx(strength)

    outputs = model(source)
    loss, logits = hook(outputs, TrainBatch("full", source, labels, None, torch.arange(4)))
    assert logits is outputs
    loss.backward()
    hook_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    head_grads = [p.grad.clone() for p in hook.trainable.parameters() if p.grad is not None]
    assert hook.trainable.step == 6

    model.zero_grad()
    hook.trainable.zero_grad()
    target_images = _targets().batch(5)
    source_features = model.forward_features(source)
    target_features = model.forward_features(target_images)
    assert source_features.shape == (4, model.num_features)
    domain_logits = hook.trainable.classifier(torch.cat([source_features, target_features]))
    domain_labels = torch.tensor([0] * 4 + [1] * len(target_images))
    domain_ce = F.cross_entropy(domain_logits, domain_labels)
    classification = F.cross_entropy(model.forward_head(source_features), labels)
    assert float(loss.detach()) == pytest.approx(float((classification + 0.7 * domain_ce).detach()),
                                                 rel=1e-5)
    (classification - 0.7 * strength * domain_ce).backward()
    for param_name, param in model.named_parameters():
        if param.grad is not None and param.grad.abs().sum() > 0:
            torch.testing.assert_close(hook_grads[param_name], param.grad, rtol=1e-4,
                                       atol=1e-6, msg=param_name)
    hook.trainable.zero_grad()
    (0.7 * F.cross_entropy(hook.trainable.classifier(
        torch.cat([source_features, target_features]).detach()), domain_labels)).backward()
    for from_hook, manual in zip(head_grads, hook.trainable.parameters(), strict=True):
        assert manual.grad is not None
        torch.testing.assert_close(from_hook, manual.grad, rtol=1e-4, atol=1e-7)
    hook.close()


def test_the_head_stage_is_plain_cross_entropy() -> None:
    model = create("test_resnet", num_classes=2, weights="none").model
    hook = DannLoss(model, lambda logits, batch: F.cross_entropy(logits, batch.targets),
                    _targets(), total_steps=4)
    features = torch.randn(3, model.num_features)
    logits = model.head(features)
    targets = torch.tensor([0, 1, 1])
    loss, _ = hook(logits, TrainBatch("head", features, targets, None, torch.arange(3)))
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(logits, targets).detach()))
    assert hook.trainable.step == 0, "the head stage does not advance the schedule"
    hook.close()


def test_target_batches_are_seeded_by_epoch_and_cycle_the_target_set() -> None:
    ids = torch.arange(5).float().view(5, 1)

    def batches(steps: range, start: TargetBatches | None = None) -> list[list[int]]:
        draw = start or TargetBatches(TensorDataset(ids), 2, steps_per_epoch=4, seed=3)
        return [draw.batch(s).view(-1).int().tolist() for s in steps]

    epoch_0 = batches(range(4))
    # 4 steps of 2 from 5 images: one pass (2 + 2 + 1) and a second one begins.
    assert sorted(sum(epoch_0[:3], [])) == [0, 1, 2, 3, 4]
    assert len(epoch_0[2]) == 1
    assert batches(range(4)) == epoch_0, "the same seed, the same batches"
    whole = batches(range(12))
    assert batches(range(8, 12)) == whole[8:], "a resumed run (at an epoch's start) draws alike"
    assert whole[4:8] != epoch_0, "each epoch its own order"


def test_domain_accuracy_and_the_probe_see_separable_and_identical_domains() -> None:
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(40, 6, generator=generator)
    shifted = torch.randn(40, 6, generator=generator) + 4.0
    same = torch.randn(40, 6, generator=generator)
    probe_far = probe_domain_accuracy(source, shifted)
    probe_same = probe_domain_accuracy(source, same)
    assert probe_far is not None and probe_far > 0.95
    assert probe_same is not None and 0.25 < probe_same < 0.75
    assert probe_domain_accuracy(source[:1], same) is None
    # A head that always answers "target": half right, whatever the counts.
    head = nn.Linear(6, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 1.0]))
    assert domain_accuracy(head, source, shifted[:10]) == 0.5
    assert math.isclose(domain_accuracy(head, source[:3], same), 0.5)


def test_a_two_headed_model_is_refused() -> None:
    model = create("deit_tiny_distilled_patch16_224", num_classes=2, weights="none",
                   timm_kwargs={"img_size": 32}).model
    with pytest.raises(ValueError, match="one head"):
        DannLoss(model, lambda logits, batch: logits.sum(), _targets(), total_steps=1)
