import pytest
import torch

from exotune.boxes import BoxLimits, BoxSpec, EntryPoint, TextEncoderBox, load_box
from exotune.errors import AccessError, BackboneNotFoundError, BoxLimitError, ConfigError


def test_spec_round_trip_and_fingerprint(tiny_box):
    spec = tiny_box.spec
    again = BoxSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.fingerprint() == spec.fingerprint()
    # limits are run-time knobs: they do not change the fingerprint
    relaxed = BoxSpec.from_dict({**spec.to_dict(), "limits": {"max_batch": 3, "max_length": 10}})
    assert relaxed.fingerprint() == spec.fingerprint()
    other = BoxSpec.from_dict({**spec.to_dict(), "pooling": "cls"})
    assert other.fingerprint() != spec.fingerprint()
    assert spec.differences(other) == ["pooling"]


@pytest.mark.parametrize(
    "field, value",
    [("modality", "audio"), ("access", "white"), ("output_dim", 0)],
)
def test_spec_rejects_bad_values(tiny_box, field, value):
    with pytest.raises(ConfigError, match=field):
        BoxSpec.from_dict({**tiny_box.spec.to_dict(), field: value})


def test_entry_point_and_limits_validate():
    with pytest.raises(ConfigError):
        EntryPoint("layer.2", 0)
    with pytest.raises(ConfigError):
        BoxLimits(max_batch=0)


def test_spec_describes_the_tiny_encoder(tiny_box):
    spec = tiny_box.spec
    assert spec.modality == "text" and spec.input_kind == "token-embeddings"
    assert spec.input_shape == (None, 16) and spec.output_dim == 16
    assert spec.access == "dark-gray" and spec.pooling == "mean" and not spec.normalized


def test_embed_and_forward_shapes(tiny_box):
    batch = tiny_box.embed(["the red car", "a sky is very blue today"])
    assert batch.embeds.shape[0] == 2 and batch.embeds.shape[2] == 16
    assert batch.mask.shape == batch.embeds.shape[:2]
    assert batch.mask[0].sum() < batch.mask[1].sum()
    assert not batch.embeds.requires_grad
    out = tiny_box.forward(batch.embeds, batch.mask)
    assert out.shape == (2, 16)


def test_padding_does_not_change_outputs(tiny_box):
    alone = tiny_box.encode(["the red car"])
    padded = tiny_box.encode(["the red car", "a sky is very blue today and it was big"])[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_cls_pooling_and_normalisation(tiny_backbone):
    box = load_box(str(tiny_backbone), pooling="cls", normalize=True)
    out = box.encode(["the red car", "blue"])
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    with pytest.raises(ConfigError, match="pooling"):
        load_box(str(tiny_backbone), pooling="max")


def test_limits_are_enforced(tiny_backbone):
    box = load_box(str(tiny_backbone), limits=BoxLimits(max_batch=2, max_length=8))
    batch = box.embed(["a", "b", "c"])
    with pytest.raises(BoxLimitError, match="max_batch"):
        box.forward(batch.embeds, batch.mask)
    long = box.embed(["the red car is very fast and big and small and slow"], max_length=64)
    with pytest.raises(BoxLimitError, match="max_length"):
        box.forward(long.embeds, long.mask)
    with pytest.raises(BoxLimitError, match="shape"):
        box.forward(torch.zeros(1, 3, 5), torch.ones(1, 3))
    with pytest.raises(BoxLimitError, match="mask"):
        box.forward(torch.zeros(1, 3, 16), torch.ones(1, 4))


def test_black_level_gives_outputs_only(tiny_backbone):
    box = load_box(str(tiny_backbone), access="black")
    assert box.encode(["the red car"]).shape == (1, 16)
    with pytest.raises(AccessError, match="black"):
        box.embed(["the red car"])
    with pytest.raises(AccessError):
        box.forward(torch.zeros(1, 3, 16), torch.ones(1, 3))


def test_texts_must_be_strings(tiny_box):
    with pytest.raises(ConfigError):
        tiny_box.embed("not a list")


def test_missing_backbones_fail_clearly(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="does not exist"):
        load_box(str(tmp_path / "nowhere" / "model"))
    with pytest.raises(BackboneNotFoundError, match="--backbone"):
        load_box(str(tmp_path))  # a folder without model files
    with pytest.raises(BackboneNotFoundError, match="hub"):
        load_box("no-such-org/no-such-model-exotune")


def test_load_box_gives_a_text_encoder_box_with_the_given_options(tiny_backbone):
    box = load_box(str(tiny_backbone), access="black")
    assert isinstance(box, TextEncoderBox)
    assert box.spec.access == "black"


def test_limits_split_a_call_into_batches_the_owner_accepts():
    limits = BoxLimits(max_batch=3)
    assert limits.batches(list("abcdefg")) == [list("abc"), list("def"), list("g")]
    assert limits.batches([]) == []
    assert [len(b) for b in BoxLimits(max_batch=4).batches(list(range(8)))] == [4, 4]
