"""The image + audio model: each input alone or both, a missing input replaced by its
learned embedding, clips padded in a batch answered as alone, and modality dropout's shares."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitkit.data.logmel import LogMelSettings
from vitkit.data.paired_inputs import PairedInput, collate
from vitkit.fusion.dropout import modality_dropout
from vitkit.fusion.model import AudioEncoder, FusionClassifier, build_fusion

SIZE = (32, 32)


@pytest.fixture(scope="module")
def model() -> FusionClassifier:
    torch.manual_seed(0)
    built, *_ = build_fusion("test_resnet", "none", ["a", "b", "c"],
                             LogMelSettings.for_rate(8000), 32, audio_width=32,
                             audio_layers=1, audio_heads=2, dim=16)
    return built.eval()


def _logits(model: nn.Module, items: list[PairedInput]) -> torch.Tensor:
    batch = collate(items, SIZE, 80)
    with torch.no_grad():
        return model(batch.images, batch.has_image, batch.mels, batch.mel_lengths,
                     batch.has_audio)


def test_image_only_audio_only_and_both_give_class_logits(model: FusionClassifier) -> None:
    image, mel = torch.randn(3, *SIZE), torch.randn(80, 37)
    logits = _logits(model, [PairedInput(image, mel), PairedInput(image, None),
                             PairedInput(None, mel)])
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1]) and not torch.allclose(logits[0], logits[2])


def test_a_missing_input_is_its_learned_embedding_whatever_the_tensor_holds(
        model: FusionClassifier) -> None:
    image, mel = torch.randn(3, *SIZE), torch.randn(80, 37)
    lengths = torch.tensor([37])
    no, yes = torch.tensor([False]), torch.tensor([True])
    with torch.no_grad():
        one = model(image[None], yes, mel[None], lengths, no)
        other = model(image[None], yes, 100 * torch.randn(1, 80, 37), lengths, no)
        # by hand: the image's projection beside the missing-audio vector, fused, the head
        image_embedding = model.image_proj(model.image_encoder.forward_features(image[None]))
        fused = torch.cat([image_embedding, model.missing_audio[None]], dim=1)
        expected = model.head(model.fuse(fused))
    torch.testing.assert_close(one, other)
    torch.testing.assert_close(one, expected)


def test_a_clip_padded_in_a_batch_is_answered_as_alone(model: FusionClassifier) -> None:
    short, long = torch.randn(80, 23), torch.randn(80, 101)
    together = _logits(model, [PairedInput(None, short), PairedInput(None, long)])
    alone = _logits(model, [PairedInput(None, short)])
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)


def test_the_audio_encoders_length_arithmetic_matches_its_convolutions() -> None:
    encoder = AudioEncoder(n_mels=8, width=8, layers=1, heads=2)
    for frames in (1, 2, 3, 4, 5, 17, 100):
        x = torch.randn(1, 8, frames)
        for conv in encoder.convs:
            x = conv(x)
        assert encoder.output_lengths(torch.tensor([frames])).item() == x.shape[-1]


def test_a_dropped_input_trains_its_missing_embedding(model: FusionClassifier) -> None:
    trainable = build_fusion("test_resnet", "none", ["a", "b"], LogMelSettings.for_rate(8000),
                             32, audio_width=16, audio_layers=1, audio_heads=2, dim=8)[0]
    batch = collate([PairedInput(torch.randn(3, *SIZE), torch.randn(80, 20))] * 2, SIZE, 80,
                    [0, 1])
    no_audio = torch.zeros(2, dtype=torch.bool)
    loss = nn.functional.cross_entropy(trainable(batch.images, batch.has_image, batch.mels,
                                                 batch.mel_lengths, no_audio), batch.targets)
    loss.backward()
    assert trainable.missing_audio.grad is not None and trainable.missing_audio.grad.abs().sum() > 0
    assert trainable.missing_image.grad is None or not trainable.missing_image.grad.any()
    assert all(p.grad is None or not p.grad.any()
               for p in trainable.audio_encoder.parameters())


def test_modality_dropout_shares_and_never_both() -> None:
    n = 200_000
    generator = torch.Generator().manual_seed(0)
    both = torch.ones(n, dtype=torch.bool)
    image, audio = modality_dropout(both, both, 0.25, generator)
    assert (image | audio).all()  # never both dropped
    assert (~image).float().mean().item() == pytest.approx(0.25, abs=0.005)
    assert (~audio).float().mean().item() == pytest.approx(0.25, abs=0.005)
    assert (image & audio).float().mean().item() == pytest.approx(0.5, abs=0.005)


def test_modality_dropout_keeps_a_lone_input_and_p_zero_changes_nothing() -> None:
    has_image = torch.tensor([True, False, True, True])
    has_audio = torch.tensor([False, True, True, True])
    image, audio = modality_dropout(has_image, has_audio, 0.5,
                                    torch.Generator().manual_seed(1))
    assert image[0] and not audio[0] and audio[1] and not image[1]
    assert (image[2:] ^ audio[2:]).all()  # p = 0.5: each pair loses exactly one input
    same = modality_dropout(has_image, has_audio, 0.0)
    assert torch.equal(same[0], has_image) and torch.equal(same[1], has_audio)
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        modality_dropout(has_image, has_audio, 0.6)


def test_the_step_scores_both_each_input_alone_and_their_mean(model: FusionClassifier) -> None:
    from vitkit.tasks.fusion import FusionStep

    torch.manual_seed(1)
    items = [PairedInput(torch.randn(3, *SIZE), torch.randn(80, 30)) for _ in range(5)]
    items += [PairedInput(None, torch.randn(80, 20)), PairedInput(torch.randn(3, *SIZE), None)]
    targets = [0, 1, 2, 0, 1, 2, 0]
    batch = collate(items, SIZE, 80, targets)
    evaluation = FusionStep(0.25).evaluate(model, [batch], torch.device("cpu"))

    def accuracy(keep: list[int], has_image: torch.Tensor, has_audio: torch.Tensor) -> float:
        with torch.no_grad():
            logits = model(batch.images, has_image, batch.mels, batch.mel_lengths, has_audio)
        hits = logits.argmax(1) == batch.targets
        return float(hits[keep].float().mean())

    no = torch.zeros(7, dtype=torch.bool)
    expected = {"accuracy_both": accuracy(list(range(7)), batch.has_image, batch.has_audio),
                "accuracy_image": accuracy([0, 1, 2, 3, 4, 6], batch.has_image, no),
                "accuracy_audio": accuracy([0, 1, 2, 3, 4, 5], no, batch.has_audio)}
    assert evaluation.details == pytest.approx(expected)
    assert evaluation.metric == pytest.approx(sum(expected.values()) / 3)
    assert FusionStep(0.25, pretrained_image=False).encoder_parameters(model) == []
    assert len(FusionStep(0.25).encoder_parameters(model)) == len(
        list(model.image_encoder.parameters()))
