"""The training config: one pydantic model whose defaults are the CLI's defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vitkit.classify.progressive import parse_size_range
from vitkit.data.intensity import IntensitySpec
from vitkit.data.transforms import Augmentation


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HeadStage(_Strict):
    """Stage 1: train only the new head on features of the frozen backbone, cached once."""

    share: float = Field(1.0, ge=0, description="share of --epochs; 0 skips the stage")
    lr: float = Field(5e-3, gt=0)
    batch_size: int = Field(16, ge=1)


class TopStage(_Strict):
    """Stage 2: train the head and the top ``blocks`` layer groups of the backbone."""

    share: float = Field(0.0, ge=0, description="off by default (see FullStage)")
    lr: float = Field(1e-3, gt=0)
    blocks: int = Field(2, ge=1, description="how many layer groups below the head to train")


class FullStage(_Strict):
    """Stage 3: train everything, with layer-wise learning-rate decay towards the input.

    The default recipe (one head epoch, then every layer) was chosen on hymenoptera and the
    textile images and reported on three sets it was not chosen on: see the README's
    "Small-data recipe".
    """

    share: float = Field(4.0, ge=0)
    lr: float = Field(1e-3, gt=0)
    layer_decay: float = Field(0.8, gt=0, le=1)


class Stages(_Strict):
    head: HeadStage = HeadStage()
    top: TopStage = TopStage()
    full: FullStage = FullStage()


class EarlyStopping(_Strict):
    patience: int = Field(4, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


class TrustConfig(_Strict):
    """What training measures and stores after the weights are final (see workflows/trust)."""

    ood: bool = Field(True, description="fit out-of-distribution statistics into the bundle")
    calibrate: bool = Field(True, description="fit temperature scaling on val into the bundle")
    explain_examples: int = Field(8, ge=0, description="validation images explained in the "
                                                       "report (0: none)")
    feature_map: bool = Field(True, description="2-D t-SNE view of val features in the report")


class ContinualConfig(_Strict):
    """`vitkit train NEW_DATA --continue-from BUNDLE`: learn new classes (or more of the old
    ones) without forgetting the old ones (see :mod:`vitkit.workflows.continual`)."""

    continue_from: str = Field(description="the bundle to continue")
    replay_ratio: float = Field(0.3, ge=0, lt=1, description="share of each epoch drawn from "
                                "the exemplar memory")
    distill_old: bool = Field(False, description="Learning without Forgetting: keep the old "
                              "classes' logits close to the old model's")
    distill_weight: float = Field(1.0, ge=0)
    old_data: str | None = Field(None, description="the old training data: exemplars when "
                                 "the bundle keeps none, and --compare-joint's old half")
    old_eval: str | None = Field(None, description="old classes' evaluation images (default: "
                                 "the old run's validation split when still on disk)")
    compare_naive: bool = Field(True, description="also fine-tune without memory or "
                                "distillation, to show what they keep")
    compare_joint: bool = Field(False, description="also retrain from the pretrained backbone "
                                "on old + new data (needs the old data)")


class DomainAdaptation(_Strict):
    """`vitkit train DATA --target-domain DIR --domain-adapt dann`: make the features of
    unlabelled target images look like the source's (see :mod:`vitkit.classify.domain`).

    The knobs' defaults were chosen on one shift and checked on another: see the
    domain-adaptation guide.
    """

    method: Literal["none", "dann"] = Field("none", description="dann: domain-adversarial "
                                            "training (gradient reversal) in the image stages")
    target: str = Field("", description="folder of unlabelled target-domain images, searched "
                        "recursively")
    target_eval: str | None = Field(None, description="labelled target images (class folders "
                                    "named like the training classes): target accuracy")
    compare_source_only: bool = Field(False, description="also train the same recipe without "
                                      "the domain loss (into OUT/source-only) and compare")
    weight: float = Field(1.0, gt=0, description="weight of the domain loss")
    lambda_max: float = Field(1.0, gt=0, description="the gradient-reversal strength the "
                              "schedule 2/(1+exp(-10p))-1 rises to")
    head_lr_scale: float = Field(1.0, gt=0, description="the domain head's learning rate as a "
                                 "multiple of the stage's (AdamW; the class head's is 1 too)")
    holdout: float = Field(0.2, gt=0, lt=1, description="share of the target images never "
                           "trained on: they measure the domain accuracy and the shift")

    @model_validator(mode="after")
    def _target_with_method(self) -> DomainAdaptation:
        if self.method == "dann" and not self.target:
            raise ValueError("--domain-adapt dann needs the unlabelled target images: pass "
                             "--target-domain DIR")
        if self.method == "none" and (self.target or self.target_eval
                                      or self.compare_source_only):
            raise ValueError("target images were given without a method: add --domain-adapt "
                             "dann (or drop --target-domain, --target-eval and "
                             "--compare-source-only)")
        return self


class TrainConfig(_Strict):
    """Everything `vitkit train` does; save it with the run to repeat it exactly."""

    data: str = ""
    model: str = "efficientnet_lite2"
    weights: str = "auto"
    timm_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for timm.create_model, "
        "recorded in the bundle (e.g. mlp_ratio of a pruned ViT, dynamic_img_size)")
    epochs: int = Field(5, ge=1, description="all stages together")
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    clip_grad: float | None = Field(1.0, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1, description="warm-up share of each stage's steps")
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    mixup: float = Field(0.0, ge=0, description="mixup alpha; 0 disables")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha; 0 disables")
    class_weights: Literal["balanced", "none"] = Field(
        "balanced", description="balanced: each class weighs the same in the loss whatever its "
        "image count (weights n / (k * n_class)); identical to none on balanced data")
    ema: float | None = Field(
        0.998, gt=0, lt=1, description="decay of a moving average of the weights that is "
        "validated and kept instead of the raw weights (e.g. 0.998; warmed up over the first "
        "steps); None: off")
    image_size: int | None = Field(
        None, ge=32, description="square input size in pixels; default: the backbone's own")
    crop_pct: float | None = Field(
        None, gt=0, le=1, description="share of the resized image the evaluation centre crop "
        "keeps; 1: the whole image (defects at the border stay visible); default: the "
        "backbone's own")
    augmentation: Augmentation = Augmentation()
    intensity: IntensitySpec | None = Field(
        None, description="medical and hard-contrast images: intensity windows (LEVEL:WIDTH or "
        "a preset, DICOM in Hounsfield units, 16-bit kept at full depth) and CLAHE, recorded "
        "in the bundle; None: plain RGB")
    progressive: str | None = Field(
        None, description="START:END, e.g. 128:224: the top and full stages train at START px "
        "first and grow in steps of 16 px to END, the training size (validation, the head "
        "stage's features and the bundle stay at END); quote it in YAML ('128:224')")
    grad_checkpointing: bool = Field(
        False, description="recompute each block's activations in the backward pass instead "
        "of keeping them: less memory, one more forward per step (top and full stages)")
    compare_scratch: bool = Field(
        False, description="also train the same recipe from random weights (OUT/scratch) and "
        "report the transfer gain (pretrained - scratch) / (1 - scratch)")
    stages: Stages = Stages()
    early_stopping: EarlyStopping | None = EarlyStopping()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    num_workers: int = Field(2, ge=0)
    max_pixels: int = Field(50_000_000, gt=0)
    trust: TrustConfig = TrustConfig()
    domain: DomainAdaptation = DomainAdaptation()
    memory: int | None = Field(None, ge=0, description="exemplars kept in the bundle for later "
                               "continual learning (class-balanced); default: none for a new "
                               "model, 1000 for a continued one")
    continual: ContinualConfig | None = None
    out: str = "runs/train"

    @field_validator("progressive", mode="before")
    @classmethod
    def _size_range(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):  # YAML 1.1 reads an unquoted 128:224 as base 60
            raise ValueError(f"expected a quoted START:END such as '128:224', got {value!r} "
                             "(in YAML write progressive: '128:224')")
        start, end = parse_size_range(value)
        return f"{start}:{end}"

    @model_validator(mode="after")
    def _extras_fit_the_run(self) -> TrainConfig:
        if self.progressive and self.image_size is not None \
                and parse_size_range(self.progressive)[1] != self.image_size:
            raise ValueError(f"progressive {self.progressive} must end at image_size "
                             f"{self.image_size} (the training size): change one of them")
        if self.compare_scratch and self.weights == "none":
            raise ValueError("compare_scratch compares pretrained weights with random ones, and "
                             "this run already starts from random weights (weights: none)")
        extras = [n for n in ("progressive", "compare_scratch") if getattr(self, n)]
        if extras and self.continual is not None:
            raise ValueError(f"continuing a bundle (continual learning) does not take "
                             f"{' or '.join(extras)}: drop {'it' if len(extras) == 1 else 'them'}, "
                             "or train a new model")
        return self

    def training_size(self) -> int | None:
        """The square input size asked for: ``image_size``, else where ``progressive`` ends."""
        if self.image_size is None and self.progressive:
            return parse_size_range(self.progressive)[1]
        return self.image_size

    @model_validator(mode="after")
    def _some_stage(self) -> TrainConfig:
        if self.stage_epochs() == {}:
            raise ValueError("every stage has share 0: give at least one stage a share > 0")
        return self

    @model_validator(mode="after")
    def _an_image_stage_to_adapt(self) -> TrainConfig:
        if self.domain.method != "none" and set(self.stage_epochs()) <= {"head"}:
            raise ValueError("domain adaptation trains the backbone, which the head stage keeps "
                             "frozen: give the top or full stage epochs (more --epochs, or "
                             "stages.full.share > 0)")
        return self

    def stage_epochs(self) -> dict[str, int]:
        """Splits ``epochs`` over the enabled stages by their shares (largest remainder).

        Every enabled stage gets at least one epoch when there are enough epochs.
        """
        shares = {
            name: float(getattr(self.stages, name).share)
            for name in ("head", "top", "full")
            if getattr(self.stages, name).share > 0
        }
        if not shares:
            return {}
        total = sum(shares.values())
        exact = {n: self.epochs * s / total for n, s in shares.items()}
        counts = {n: int(v) for n, v in exact.items()}
        if self.epochs >= len(shares):
            for n in counts:
                counts[n] = max(1, counts[n])
        # Later stages win ties: fine-tuning deeper layers benefits most from extra epochs.
        order = sorted(shares, key=lambda n: (exact[n] - int(exact[n]), list(shares).index(n)))
        while sum(counts.values()) < self.epochs:
            counts[order.pop()] += 1
        while sum(counts.values()) > self.epochs:
            largest = max(counts, key=lambda n: (counts[n], list(shares).index(n)))
            counts[largest] -= 1
        return {n: c for n, c in counts.items() if c > 0}


def _end_to_end() -> Stages:
    return Stages.model_validate({"head": {"share": 0.0}, "top": {"share": 0.0},
                                  "full": {"share": 1.0}})


class DistillConfig(TrainConfig):
    """Everything `vitkit distill` does: a training run whose loss also listens to a teacher.

    ``model`` is the student. The defaults follow Hinton et al. (2015) and DeiT: the student
    learns end to end (one ``full`` stage; a pretrained student may still be staged), from
    the teacher's softened distribution at temperature 4 — high enough that a confident
    teacher's second choices still carry signal, and the usual value in the KD literature —
    and from the labels, weighted equally (``alpha`` 0.5) so that the labels correct the
    teacher's mistakes instead of the student copying them.
    """

    teacher: str = Field("", description="bundle folder of the teacher classifier")
    teacher_variant: str | None = Field(
        None, description="the teacher's variant that computes its logits (default torch-fp32); "
        "a quantized or exported one makes every training step cheaper")
    model: str = Field("deit_tiny_patch16_224", description="the student")
    # Distillation keeps the schedule it was measured with (the classification defaults
    # changed with the small-data recipe; a student learns end to end from a teacher).
    epochs: int = Field(10, ge=1, description="all stages together")
    batch_size: int = Field(32, ge=1)
    ema: float | None = Field(None, gt=0, lt=1, description="moving average of the weights; "
                              "None: off")
    mode: Literal["soft", "hard", "token"] = Field(
        "soft", description="soft: KL to the teacher's softened probabilities; hard: CE to the "
        "teacher's top class; token: DeiT distillation token (a *_distilled_* student)")
    temperature: float = Field(4.0, gt=0, description="softens both distributions (soft mode)")
    alpha: float = Field(0.5, ge=0, le=1, description="teacher share of the loss; 1-alpha: labels")
    augment: bool = Field(True, description="random crops/flips; off: the teacher's logits are "
                          "computed once per image and cached")
    feature_weight: float = Field(
        0.0, ge=0, description="weight of a feature term, 1 - cos(P s, t) between the student's "
        "pre-logits embedding (through a trained linear map P) and the teacher's; 0: logits only")
    stages: Stages = Field(default_factory=_end_to_end)
    out: str = "runs/distill"

    @model_validator(mode="after")
    def _features_need_the_torch_teacher(self) -> DistillConfig:
        if self.feature_weight > 0 and self.teacher_variant not in (None, "torch-fp32"):
            raise ValueError("feature_weight needs the teacher's embeddings, which only its torch "
                             "model gives: drop teacher_variant (or set feature_weight to 0)")
        return self

    @model_validator(mode="after")
    def _no_domain_adaptation(self) -> DistillConfig:
        if self.domain.method != "none":
            raise ValueError("distill does not adapt domains: drop the domain section (train "
                             "the teacher or the student with --domain-adapt dann)")
        return self

    @model_validator(mode="after")
    def _train_only_extras(self) -> DistillConfig:
        given = [name for name in ("progressive", "compare_scratch") if getattr(self, name)]
        if given:
            raise ValueError(f"`vitkit distill` does not take {' or '.join(given)} (options of "
                             "`vitkit train`: the teacher's logits are computed at the full "
                             "size, and a scratch comparison is a plain training run)")
        return self

    @model_validator(mode="after")
    def _token_needs_no_head_stage(self) -> DistillConfig:
        if self.mode == "token" and self.stages.head.share > 0:
            raise ValueError("mode 'token' trains two heads on two tokens, which a head-only "
                             "stage on cached pooled features cannot: set stages.head.share to 0")
        return self
