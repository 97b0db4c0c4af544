"""Training config, stage planning, learning-rate schedule and checkpoints (no training runs)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from vitkit.backbones import ImageClassifier, create
from vitkit.classify import checkpoint as checkpoint_module
from vitkit.classify.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from vitkit.classify.config import TrainConfig
from vitkit.classify.schedule import (
    apply_trainability,
    make_optimizer,
    plan_stage,
    warmup_cosine,
)
from vitkit.config import dump_config, load_config
from vitkit.errors import ConfigError, VitkitError


def _config(epochs: int, head: float = 0.3, top: float = 0.3, full: float = 0.4) -> TrainConfig:
    return TrainConfig(epochs=epochs, stages={"head": {"share": head}, "top": {"share": top},
                                              "full": {"share": full}})


# ------------------------------------------------------------------ stage_epochs
@pytest.mark.parametrize(
    ("epochs", "shares", "expected"),
    [
        # default shares 0.3/0.3/0.4
        (10, (0.3, 0.3, 0.4), {"head": 3, "top": 3, "full": 4}),
        # exact 1.5/1.5/2.0 -> 1/1/2; the spare epoch goes to the later of the tied remainders
        (5, (0.3, 0.3, 0.4), {"head": 1, "top": 2, "full": 2}),
        # exact 0.9/0.9/1.2: every stage gets its minimum of one epoch
        (3, (0.3, 0.3, 0.4), {"head": 1, "top": 1, "full": 1}),
        # fewer epochs than stages: the largest remainders win, head stage first to go
        (2, (0.3, 0.3, 0.4), {"top": 1, "full": 1}),
        (1, (0.3, 0.3, 0.4), {"full": 1}),
        (4, (1, 1, 2), {"head": 1, "top": 1, "full": 2}),
        (4, (1, 2, 1), {"head": 1, "top": 2, "full": 1}),
        # a share of 0 skips the stage: exact 1.71/2.29 -> 1/2, +1 to head (remainder .71)
        (4, (0.3, 0.0, 0.4), {"head": 2, "full": 2}),
        (7, (0.0, 0.0, 1.0), {"full": 7}),
        (3, (1.0, 0.0, 0.0), {"head": 3}),
        # minimums overshoot (1+1+2 > 3): the largest stage gives one back
        (3, (0.01, 0.01, 0.98), {"head": 1, "top": 1, "full": 1}),
        # 100 epochs of 1/3 each: 33.3 each, the spare one to the last stage
        (100, (1, 1, 1), {"head": 33, "top": 33, "full": 34}),
    ],
)
def test_stage_epochs(epochs: int, shares: tuple[float, float, float],
                      expected: dict[str, int]) -> None:
    result = _config(epochs, *shares).stage_epochs()
    assert result == expected
    assert list(result) == [s for s in ("head", "top", "full") if s in result], "stage order"


def test_stage_epochs_always_sum_to_epochs() -> None:
    share_values = (0.0, 0.05, 0.3, 1.0, 2.5)
    for epochs in (1, 2, 3, 4, 7, 13):
        for shares in itertools.product(share_values, repeat=3):
            if not any(shares):
                continue
            result = _config(epochs, *shares).stage_epochs()
            enabled = [name for name, s in zip(("head", "top", "full"), shares, strict=True)
                       if s > 0]
            assert sum(result.values()) == epochs, (epochs, shares, result)
            assert set(result) <= set(enabled)
            assert all(n >= 1 for n in result.values())
            if epochs >= len(enabled):
                assert set(result) == set(enabled), (epochs, shares, result)


def test_all_shares_zero_is_invalid() -> None:
    with pytest.raises(ValidationError, match="every stage has share 0"):
        _config(5, 0, 0, 0)


def test_config_rejects_unknown_and_invalid_values() -> None:
    with pytest.raises(ValidationError):
        TrainConfig(epochs=0)
    with pytest.raises(ValidationError):
        TrainConfig(epoch=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TrainConfig(stages={"full": {"layer_decay": 1.5}})


# ------------------------------------------------------------------ load_config
def test_yaml_typo_suggests_the_right_key(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("epoch: 3\nstages:\n  head:\n    shar: 0.5\nearly_stopping:\n"
                    "  patiense: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, path, {})
    message = str(info.value)
    assert str(path) in message
    assert "unknown option 'epoch'. Did you mean 'epochs'?" in message
    assert "unknown option 'stages.head.shar'. Did you mean 'share'?" in message
    assert "unknown option 'early_stopping.patiense'. Did you mean 'patience'?" in message


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("stages:\n  top:\n    zzzzzz: 1\n")
    with pytest.raises(ConfigError, match="Known keys: share, lr, blocks"):
        load_config(TrainConfig, path, {})


def test_invalid_value_names_the_option(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 0\n")
    with pytest.raises(ConfigError, match="epochs: Input should be greater than or equal to 1"):
        load_config(TrainConfig, path, {})


def test_command_line_overrides_beat_yaml(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 9\nmodel: test_vit\nseed: 5\nstages:\n  top:\n    blocks: 3\n")
    config = load_config(TrainConfig, path, {"epochs": 2, "model": None, "seed": 0})
    assert config.epochs == 2, "a flag beats the file"
    assert config.seed == 0, "a flag equal to the default still beats the file"
    assert config.model == "test_vit", "an option not given keeps the file's value"
    assert config.stages.top.blocks == 3
    assert config.stages.full.share == 4.0, "defaults fill the rest"


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = TrainConfig(epochs=4, model="test_resnet", stages={"top": {"blocks": 1}},
                         early_stopping=None, augmentation={"scale": (0.5, 1.0)})
    dump_config(config, tmp_path / "config.yaml")
    assert load_config(TrainConfig, tmp_path / "config.yaml", {}) == config


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "config file not found"),
        ("epochs: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "must hold a mapping"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "train.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, path, {})


def test_empty_config_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("")
    assert load_config(TrainConfig, path, {"data": "x"}) == TrainConfig(data="x")


# ------------------------------------------------------------------ warmup_cosine
def test_warmup_cosine_shape() -> None:
    factor = warmup_cosine(100, warmup_share=0.1, min_ratio=0.01)
    values = [factor(step) for step in range(101)]
    warmup = values[:10]
    assert warmup[0] == pytest.approx(1 / 11)
    assert all(a < b for a, b in itertools.pairwise(warmup)), "warm-up rises"
    assert values[10] == pytest.approx(1.0), "peak after the warm-up"
    assert max(values) == pytest.approx(1.0)
    decay = values[10:]
    assert all(a > b for a, b in itertools.pairwise(decay)), "cosine falls"
    assert values[55] == pytest.approx(0.01 + 0.99 * 0.5), "half-way down at half the decay"
    assert values[100] == pytest.approx(0.01), "ends at min_ratio"
    assert factor(250) == pytest.approx(0.01), "stays there"


def test_warmup_cosine_without_warmup_starts_at_peak() -> None:
    factor = warmup_cosine(10, warmup_share=0.0, min_ratio=0.0)
    assert factor(0) == 1.0
    assert factor(10) == pytest.approx(0.0)
    single = warmup_cosine(1, warmup_share=0.1, min_ratio=0.2)
    assert single(0) == 1.0, "a one-step stage has no warm-up (round(0.1) == 0)"


def test_warmup_cosine_drives_lambda_lr() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(20, 0.25, 0.1))
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.5 / 6)
    assert max(lrs) == pytest.approx(0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


# ------------------------------------------------------------------ plan_stage
@pytest.fixture
def resnet() -> ImageClassifier:
    torch.manual_seed(0)
    return create("test_resnet", num_classes=3, weights="none").model


def _ids(params: list[nn.Parameter]) -> set[int]:
    return {id(p) for p in params}


def test_head_stage_trains_only_the_head(resnet: ImageClassifier) -> None:
    plan = plan_stage(resnet, "head")
    assert _ids(plan.parameters) == _ids(list(resnet.head.parameters()))
    assert [scale for _, scale in plan.groups] == [1.0]


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_top_stage_trains_head_and_top_groups(resnet: ImageClassifier, blocks: int) -> None:
    groups = resnet.layer_groups()
    plan = plan_stage(resnet, "top", top_blocks=blocks)
    expected = _ids(list(resnet.head.parameters()))
    for group in groups[-blocks:]:
        expected |= _ids(group)
    assert _ids(plan.parameters) == expected
    assert not _ids(plan.parameters) & _ids(groups[0]), "the stem stays frozen"
    assert all(scale == 1.0 for _, scale in plan.groups)


def test_full_stage_decays_learning_rates_towards_the_input(resnet: ImageClassifier) -> None:
    groups = resnet.layer_groups()
    n = len(groups)
    plan = plan_stage(resnet, "full", layer_decay=0.5)
    assert _ids(plan.parameters) == _ids(list(resnet.parameters())), "everything trains"
    assert len(plan.parameters) == len(set(map(id, plan.parameters)))

    base_lr = 1e-3
    optimizer = make_optimizer(plan, base_lr, weight_decay=0.05)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(lr_of) == len(plan.parameters), "every parameter in exactly one group"
    per_group = [{lr_of[id(p)] for p in group} for group in groups]
    assert all(len(lrs) == 1 for lrs in per_group)
    ordered = [lrs.pop() for lrs in per_group]
    assert ordered == pytest.approx([base_lr * 0.5 ** (n - i) for i in range(n)])
    assert all(a < b for a, b in itertools.pairwise(ordered)), "lower layers learn slower"
    assert {lr_of[id(p)] for p in resnet.head.parameters()} == {base_lr}


def test_optimizer_skips_weight_decay_on_biases_and_norms(resnet: ImageClassifier) -> None:
    optimizer = make_optimizer(plan_stage(resnet, "full", layer_decay=0.8), 1e-3, 0.05)
    for group in optimizer.param_groups:
        dims = {p.ndim for p in group["params"]}
        if group["weight_decay"] == 0.0:
            assert dims <= {0, 1}
        else:
            assert group["weight_decay"] == 0.05
            assert min(dims) >= 2
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])


def test_unknown_stage(resnet: ImageClassifier) -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        plan_stage(resnet, "middle")


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_apply_trainability_freezes_the_rest_and_keeps_frozen_bn_in_eval(
    resnet: ImageClassifier,
) -> None:
    plan = plan_stage(resnet, "top", top_blocks=1)
    resnet.eval()
    apply_trainability(resnet, plan)
    trainable = _ids(plan.parameters)
    for param in resnet.parameters():
        assert param.requires_grad == (id(param) in trainable)
    assert resnet.training

    frozen = [m for m in _batchnorms(resnet) if not m.weight.requires_grad]
    training = [m for m in _batchnorms(resnet) if m.weight.requires_grad]
    assert frozen and training
    assert all(not m.training for m in frozen)
    assert all(m.training for m in training)

    before = {id(m): m.running_mean.clone() for m in frozen}
    resnet(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert all(torch.equal(m.running_mean, before[id(m)]) for m in frozen), \
        "frozen BN statistics must not move"
    assert any(not torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
               for m in training), "trainable BN layers still update their statistics"


def test_apply_trainability_full_unfreezes_everything(resnet: ImageClassifier) -> None:
    apply_trainability(resnet, plan_stage(resnet, "head"))
    apply_trainability(resnet, plan_stage(resnet, "full", layer_decay=0.75))
    assert all(p.requires_grad for p in resnet.parameters())
    assert all(m.training for m in resnet.modules())


# ------------------------------------------------------------------ checkpoints
def _state() -> dict:
    return {
        "progress": {"epoch": 3, "best_loss": math.inf, "stopped_early": ["top"],
                     "history": [{"epoch": 1, "stage": "head", "val_acc": 0.5}]},
        "model": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(7)},
        "stages": ["head", "top", "full"],
    }


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(_state(), path)
    loaded = load_checkpoint(path)
    assert loaded["format"] == CHECKPOINT_FORMAT
    assert loaded["progress"] == _state()["progress"]
    assert loaded["stages"] == ["head", "top", "full"]
    assert torch.equal(loaded["model"]["w"], _state()["model"]["w"])
    assert torch.equal(loaded["model"]["n"], torch.tensor(7))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_checkpoint_holds_optimizer_state(tmp_path: Path) -> None:
    param = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    optimizer.step()
    save_checkpoint({"optimizer": optimizer.state_dict()}, tmp_path / "last.pt")
    restored = torch.optim.AdamW([nn.Parameter(torch.ones(3))], lr=0.1)
    restored.load_state_dict(load_checkpoint(tmp_path / "last.pt")["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])


def test_a_failing_save_leaves_the_old_checkpoint(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_state(), path)
    before = path.read_bytes()
    real_save = torch.save

    def dies_half_way(obj: object, f: str) -> None:
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise KeyboardInterrupt  # e.g. Ctrl-C while writing

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**_state(), "stages": ["full"]}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "the temp file is removed"
    assert load_checkpoint(path)["stages"] == ["head", "top", "full"]


class _Payload:
    pass


def test_checkpoint_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "progress": _Payload()}, path)
    with pytest.raises(VitkitError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_damaged_or_foreign_checkpoint(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"\x00garbage")
    with pytest.raises(VitkitError, match="Delete it to start the run afresh"):
        load_checkpoint(damaged)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": CHECKPOINT_FORMAT + 1}, foreign)
    with pytest.raises(VitkitError, match="another vitkit version"):
        load_checkpoint(foreign)


def test_a_flag_in_a_section_keeps_the_sections_other_keys_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("trust:\n  calibrate: false\n  explain_examples: 2\n")
    cfg = load_config(TrainConfig, path, {"trust": {"ood": False, "calibrate": None}})
    assert (cfg.trust.ood, cfg.trust.calibrate, cfg.trust.explain_examples) == (False, False, 2)
    assert load_config(TrainConfig, None, {"trust": {"ood": None}}).trust.ood is True


def test_transformers_get_their_own_full_stage_rates_unless_given() -> None:
    from vitkit.backbones import create
    from vitkit.workflows.train import TRANSFORMER_FULL_STAGE, family_recipe

    vit = create("test_vit", num_classes=2, weights="none")
    cnn = create("test_resnet", num_classes=2, weights="none")
    default = TrainConfig(data="x")
    adapted = family_recipe(default, vit)
    assert adapted.stages.full.lr == TRANSFORMER_FULL_STAGE["lr"]
    assert adapted.stages.full.layer_decay == TRANSFORMER_FULL_STAGE["layer_decay"]
    assert adapted.stages.full.share == default.stages.full.share
    assert family_recipe(default, cnn) == default
    given = TrainConfig.model_validate({"data": "x", "stages": {"full": {"lr": 3e-4}}})
    kept = family_recipe(given, vit)
    assert kept.stages.full.lr == 3e-4, "a learning rate the user set is kept"
    assert kept.stages.full.layer_decay == TRANSFORMER_FULL_STAGE["layer_decay"]
