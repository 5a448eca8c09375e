"""A shared conformance suite that every registered adapter passes, plus the DGA config."""

import dataclasses
import re

import pytest
import torch
from torch import nn

from exotune.errors import AccessError, ConfigError
from exotune.graybox import (
    DGAConfig,
    GrayBoxModel,
    TextShiftConfig,
    adapter_names,
    register_adapter,
)
from exotune.graybox.registry import build_adapter, config_from_dict, config_to_dict, get_entry

from .conftest import backbone_module

OUTPUT_ADAPTERS = adapter_names("output")
INPUT_ADAPTERS = adapter_names("input")


def test_registry_lists_the_builtin_adapters():
    assert {"linear", "mlp"} <= set(OUTPUT_ADAPTERS)
    assert {"text-shift", "pixel-conv", "pixel-residual"} <= set(INPUT_ADAPTERS)
    assert adapter_names("input", "image") == ["pixel-conv", "pixel-residual"]
    assert adapter_names("input", "text") == ["text-shift", "token-conditioned", "token-lowrank"]


@pytest.mark.parametrize("name", OUTPUT_ADAPTERS)
@pytest.mark.parametrize("modality", ["text", "image"])
def test_output_adapter_conformance(name, modality, tiny_box, tiny_image_box):
    box = tiny_box if modality == "text" else tiny_image_box
    entry = get_entry("output", name)
    config = entry.config_cls()
    assert config_from_dict("output", config_to_dict("output", config)) == config
    adapter = build_adapter("output", config, box.spec)
    z = torch.randn(4, box.spec.output_dim)
    torch.testing.assert_close(adapter(z), z)  # identity at start
    assert sum(p.numel() for p in adapter.parameters() if p.requires_grad) > 0
    adapter(z).sum().backward()
    assert any(p.grad is not None for p in adapter.parameters())


def _adapt_and_run(adapter, box):
    """The adapter's output through the box, for the input kind of the box."""
    if box.spec.modality == "image":
        pixels = torch.randn(2, *box.spec.input_shape)
        out = adapter(pixels)
        assert out.shape == pixels.shape
        torch.testing.assert_close(out, pixels)  # identity at start
        return box.forward(out)
    batch = box.embed(["the red car", "blue sky is big"])
    context = [box.forward(batch.embeds, batch.mask).detach()] if getattr(adapter, "takes_context", False) else []
    embeds, mask = adapter(batch.embeds, batch.mask, *context)
    assert embeds.shape[0] == 2 and embeds.shape[2] == box.spec.input_dim
    assert mask.shape == embeds.shape[:2]
    return box.forward(embeds, mask)


@pytest.mark.parametrize("name", INPUT_ADAPTERS)
def test_input_adapter_conformance(name, tiny_box, tiny_image_box):
    entry = get_entry("input", name)
    box, other = (tiny_image_box, tiny_box) if "image" in entry.modalities else (tiny_box, tiny_image_box)
    config = entry.config_cls()
    assert config_from_dict("input", config_to_dict("input", config)) == config
    adapter = build_adapter("input", config, box.spec)
    _adapt_and_run(adapter, box).sum().backward()
    assert all(p.grad is not None for p in adapter.parameters())
    with pytest.raises(ConfigError, match=re.escape(f"works on {entry.modalities}")):
        build_adapter("input", config, other.spec)


@pytest.mark.parametrize("name", adapter_names("input", "text"))
def test_text_input_adapters_are_the_identity_at_step_0(name, tiny_box):
    """Without extra tokens (which add positions), every text input adapter starts as the identity."""
    config = dataclasses.replace(get_entry("input", name).config_cls(), extra_tokens=0)
    model = GrayBoxModel(tiny_box, DGAConfig(config, None))
    texts = ["the red car", "a sky is very blue"]
    torch.testing.assert_close(model.encode(texts), tiny_box.encode(texts))


def test_shift_only_is_identity_at_start(tiny_box):
    model = GrayBoxModel(tiny_box, DGAConfig(TextShiftConfig(extra_tokens=0), None))
    texts = ["the red car", "a sky is very blue"]
    torch.testing.assert_close(model.encode(texts), tiny_box.encode(texts))


@pytest.mark.parametrize("k", [0, 1, 3])
def test_extra_tokens_extend_sequence_and_mask(tiny_box, k):
    cfg = TextShiftConfig(extra_tokens=k)
    adapter = build_adapter("input", cfg, tiny_box.spec)
    batch = tiny_box.embed(["the red car", "blue"])
    embeds, mask = adapter(batch.embeds, batch.mask)
    assert embeds.shape[1] == batch.embeds.shape[1] + k
    assert mask[:, 1 : 1 + k].eq(1).all()
    assert mask.sum(1).tolist() == [m + k for m in batch.mask.sum(1).tolist()]
    torch.testing.assert_close(embeds[:, 0], batch.embeds[:, 0])  # [CLS] untouched (shift is zero)


def test_shift_leaves_padding_alone(tiny_box):
    adapter = build_adapter("input", TextShiftConfig(extra_tokens=0), tiny_box.spec)
    with torch.no_grad():
        adapter.shift.fill_(1.0)
    batch = tiny_box.embed(["the red car is fast", "blue"])
    embeds, _ = adapter(batch.embeds, batch.mask)
    pad = batch.mask == 0
    torch.testing.assert_close(embeds[pad], batch.embeds[pad])
    torch.testing.assert_close(embeds[~pad], batch.embeds[~pad] + 1.0)


def test_gain_scales_real_tokens_then_shifts(tiny_box):
    model = GrayBoxModel(tiny_box, DGAConfig(TextShiftConfig(extra_tokens=0, gain=True), None))
    texts = ["the red car is fast", "blue"]
    torch.testing.assert_close(model.encode(texts), tiny_box.encode(texts))  # g = 0: the identity
    adapter = model.input_adapter
    with torch.no_grad():
        adapter.gain.fill_(0.5)
        adapter.shift.fill_(1.0)
    batch = tiny_box.embed(texts)
    embeds, _ = adapter(batch.embeds, batch.mask)
    pad = batch.mask == 0
    torch.testing.assert_close(embeds[pad], batch.embeds[pad])
    torch.testing.assert_close(embeds[~pad], batch.embeds[~pad] * 1.5 + 1.0)
    model(texts).sum().backward()
    assert adapter.gain.grad.abs().sum() > 0
    assert {id(p) for p in model.parameter_groups()["input"]} == {id(adapter.shift), id(adapter.gain)}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"extra_tokens": -1}, "extra_tokens"),
        ({"shift": False, "extra_tokens": 0}, "learns nothing"),
        ({"gain": 1}, "gain"),
        ({"init_std": -1.0}, "init_std"),
    ],
)
def test_input_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TextShiftConfig(**kwargs)


def test_registry_rejects_bad_registrations():
    @dataclasses.dataclass
    class Cfg:
        pass

    with pytest.raises(ConfigError, match="already registered"):
        register_adapter("output", "linear", Cfg)
    with pytest.raises(ConfigError, match="must match"):
        register_adapter("output", "Bad Name", Cfg)
    with pytest.raises(ConfigError, match="kind"):
        register_adapter("middle", "x", Cfg)
    with pytest.raises(ConfigError, match="dataclass"):
        register_adapter("output", "not-a-dataclass", dict)
    with pytest.raises(ConfigError, match="unknown output adapter"):
        get_entry("output", "nope")


def test_unknown_config_keys_warn_and_drop():
    with pytest.warns(UserWarning, match="bogus"):
        cfg = config_from_dict("output", {"type": "mlp", "hidden": 8, "bogus": 1})
    assert cfg.hidden == 8
    with pytest.raises(ConfigError, match="type"):
        config_from_dict("output", {"hidden": 8})


@pytest.mark.parametrize("variant", ["both", "input-only", "output-only", "none"])
def test_dga_variants_round_trip(variant, tiny_box):
    cfg = DGAConfig.variant(variant)
    assert cfg.variant_name == variant
    assert DGAConfig.from_dict(cfg.to_dict()) == cfg
    model = GrayBoxModel(tiny_box, cfg)
    assert (model.input_adapter is not None) == (variant in ("both", "input-only"))
    assert (model.output_adapter is not None) == (variant in ("both", "output-only"))
    with pytest.raises(ConfigError):
        DGAConfig.variant("sideways")


def test_graybox_model_holds_only_user_tensors(tiny_box):
    model = GrayBoxModel(tiny_box, DGAConfig())
    backbone_ids = {id(p) for p in backbone_module(tiny_box).parameters()}
    assert not backbone_ids & {id(p) for p in model.parameters()}
    assert all(k.startswith(("input_adapter.", "output_adapter.")) for k in model.state_dict())
    assert not any(isinstance(m, nn.Module) and m is backbone_module(tiny_box) for m in model.modules())


def test_graybox_needs_a_gray_box(tiny_backbone):
    from exotune.boxes import load_box

    with pytest.raises(AccessError):
        GrayBoxModel(load_box(str(tiny_backbone), access="black"))


def test_output_only_caches_backbone_outputs(tiny_box):
    model = GrayBoxModel(tiny_box, DGAConfig.variant("output-only"))
    texts = ["the red car", "blue", "the red car"]
    first = model(texts)
    assert len(model._cache) == 2
    torch.testing.assert_close(model(texts), first)
    torch.testing.assert_close(first, tiny_box.encode(texts))
