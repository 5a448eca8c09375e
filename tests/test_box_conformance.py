"""What every kind of box promises, checked the same way for each: its spec tells no weights
and no names; the backbone is frozen and stays bit-identical through training; gradients
reach only the inputs and the entry tokens; a served box answers as the local one does.

A new kind of box joins with one line in KINDS: a builder of a ``Case`` from tiny models
built here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from exotune.boxes import BoxSpec, TextEncoderBox, VisionEncoderBox, clip_boxes
from exotune.boxes.base import model_digest
from exotune.boxes.loading import load_text_encoder
from exotune.boxes.open_clip import open_clip_boxes
from exotune.boxes.pairs import PAIRS
from exotune.graybox import DGAConfig, EntryTokensConfig, GrayBoxModel

from .conftest import StandInOpenCLIP, build_tiny_clip, draw_shape, stand_in_tokenizer, tiny_vision
from .family_models import FAMILIES, build_family
from .pair_models import PAIR_FAMILIES, build_pair

TEXTS = ["the car is red", "a blue sky is big", "green leaf"]
LIGHT = {"entry_points": "all", "entry_tokens_max": 4}


def options(light) -> dict:
    """Box options: dark-gray (False), light-gray (True), or light-gray whose entry points add
    their tokens to the positions' hidden states ("add")."""
    return {**LIGHT, "entry_mode": light} if isinstance(light, str) else (LIGHT if light else {})


@dataclass
class Case:
    box: object
    model: nn.Module  # test-only: the module hidden in the box, to check it never changes
    local: object | None = None  # a served box: the local box behind it


def text_box(backbone, light=False):
    model, tokenizer, _ = load_text_encoder(str(backbone))
    return Case(TextEncoderBox(model, tokenizer, normalize=False, **options(light)), model)


def family_box(backbone, family: str, light=False):
    folder = backbone.parent / f"family-{family}"  # the session's tmp folder, built once
    if not folder.is_dir():
        build_family(folder, family)
    return text_box(folder, light)


def clip_tower(tower: str, light=False):
    model, tokenizer = build_tiny_clip()
    return Case(getattr(clip_boxes(model, tokenizer, **options(light)), tower), model)


def vision_box(kind: str, light=False):
    model = tiny_vision(kind)
    return Case(VisionEncoderBox(model, **options(light)), model)


def pair_tower(family: str, tower: str, light=False):
    model, tokenizer = build_pair(family)
    return Case(getattr(PAIRS[family].build(model, tokenizer, **options(light)), tower), model)


def open_clip_tower(tower: str):
    model = StandInOpenCLIP()  # open_clip's layout; the package itself: test_vision.test_open_clip_library
    return Case(getattr(open_clip_boxes(model, stand_in_tokenizer), tower), model)


def served(backbone, light=False, stateless=False, family=None):
    return served_case(family_box(backbone, family, light) if family else text_box(backbone, light), stateless)


def served_case(local: Case, stateless=False):
    pytest.importorskip("fastapi")
    from .serve_helpers import make_app, remote

    return Case(remote(make_app(local.box, stateless=stateless)), local.model, local=local.box)


def served_image(light=False, stateless=False):
    return served_case(vision_box("vit", light), stateless)


KINDS = {
    "text": lambda b: text_box(b),
    "text-light": lambda b: text_box(b, light=True),
    "text-light-add": lambda b: text_box(b, light="add"),
    "text-light-shift": lambda b: text_box(b, light="shift"),
    "text-light-affine": lambda b: text_box(b, light="affine"),
    "remote-light-affine": lambda b: served(b, light="affine"),
    "clip-text": lambda b: clip_tower("text"),
    "clip-text-light": lambda b: clip_tower("text", light=True),
    "clip-text-light-add": lambda b: clip_tower("text", light="add"),
    "clip-image-light-shift": lambda b: clip_tower("image", light="shift"),
    "clip-image": lambda b: clip_tower("image"),
    "clip-image-light": lambda b: clip_tower("image", light=True),
    "vit": lambda b: vision_box("vit"),
    "vit-light": lambda b: vision_box("vit", light=True),
    "vit-light-add": lambda b: vision_box("vit", light="add"),
    "vit-light-shift": lambda b: vision_box("vit", light="shift"),
    "dinov2": lambda b: vision_box("dinov2"),
    "dinov2-light": lambda b: vision_box("dinov2", light=True),
    "open-clip-text": lambda b: open_clip_tower("text"),
    "open-clip-image": lambda b: open_clip_tower("image"),
    "remote": lambda b: served(b),
    "remote-stateless": lambda b: served(b, stateless=True),
    "remote-light": lambda b: served(b, light=True),
    "remote-light-stateless": lambda b: served(b, light=True, stateless=True),
    "remote-light-add": lambda b: served(b, light="add"),
    "remote-light-shift-stateless": lambda b: served(b, light="shift", stateless=True),
    "remote-qwen2-light": lambda b: served(b, light=True, family="qwen2"),
    "remote-image": lambda b: served_image(),
    "remote-image-light-stateless": lambda b: served_image(light=True, stateless=True),
    "remote-siglip-text-light": lambda b: served_case(pair_tower("siglip", "text", light=True)),
    "remote-siglip-image": lambda b: served_case(pair_tower("siglip", "image")),
    "remote-blip-text-light-stateless": lambda b: served_case(pair_tower("blip", "text", light=True), stateless=True),
    **{
        f"{f}-{t}{s}": (lambda b, f=f, t=t, s=s: pair_tower(f, t, light=bool(s)))
        for f in PAIR_FAMILIES
        for t in ("text", "image")
        for s in ("", "-light")
    },
    **{family: (lambda b, f=family: family_box(b, f)) for family in FAMILIES},
    **{f"{family}-light": (lambda b, f=family: family_box(b, f, light=True)) for family in FAMILIES},
}
REMOTE = [k for k in KINDS if k.startswith("remote")]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=list(KINDS))
def case(request, tiny_backbone) -> Case:
    return KINDS[request.param](tiny_backbone)


def inputs(box) -> list:
    """Texts for a text box, PIL images for an image box."""
    if box.spec.modality == "text":
        return TEXTS
    return [draw_shape("circle", "red"), draw_shape("square", "blue", seed=1), draw_shape("triangle", "green")]


def entry_tokens(spec: BoxSpec, requires_grad=False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        e.name: torch.randn(2, spec.entry_dim, generator=g).requires_grad_(requires_grad) for e in spec.entry_points
    }


def box_inputs(box, reference=None) -> tuple[torch.Tensor, ...]:
    """What ``forward`` takes, as leaves that ask for gradients: (embeds, mask) or (pixels,)."""
    reference = reference or box
    if box.spec.modality == "text":
        batch = reference.embed(TEXTS)
        return batch.embeds.clone().requires_grad_(True), batch.mask
    return (reference.preprocess(inputs(box)).clone().requires_grad_(True),)


def test_spec_tells_no_weights_and_no_names(case):
    spec = case.box.spec
    text = json.dumps(spec.to_dict())  # JSON: no tensors
    assert BoxSpec.from_dict(json.loads(text)) == spec
    assert len(text) < 4000  # a description, not weights
    assert len(spec.model_digest) == 16 and int(spec.model_digest, 16) >= 0  # identified by a hash, never shown
    config = getattr(case.model, "config", None)
    names = {type(case.model).__name__, getattr(config, "model_type", None), getattr(config, "_name_or_path", None)}
    for name in filter(None, names):
        assert name.lower() not in text.lower() and name not in repr(case.box)
    box = case.box
    assert not isinstance(box, nn.Module)
    assert not any(hasattr(box, n) for n in ("parameters", "state_dict", "named_parameters", "model"))
    public = [v for k, v in vars(box).items() if not k.startswith("_")]
    assert not any(isinstance(v, (nn.Module, torch.Tensor)) for v in public)


def test_backbone_is_frozen_and_bit_identical_after_training(case):
    spec = case.box.spec
    assert all(not p.requires_grad for p in case.model.parameters())
    assert not case.model.training
    before, digest = {k: v.clone() for k, v in case.model.state_dict().items()}, model_digest(case.model)
    lga = EntryTokensConfig(tokens=2) if spec.entry_points else None
    model = GrayBoxModel(case.box, DGAConfig.variant("both", entry_tokens=lga, modality=spec.modality))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(inputs(case.box)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    assert all(p.grad is None for p in case.model.parameters())
    after = case.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())
    assert model_digest(case.model) == digest


def test_gradients_reach_only_inputs_and_entry_tokens(case):
    box = case.box
    x = box_inputs(box)
    tokens = entry_tokens(box.spec, requires_grad=True)
    out = box.forward(*x, tokens or None)
    assert out.shape == (len(inputs(box)), box.spec.output_dim)
    out.pow(2).sum().backward()
    assert x[0].grad is not None and x[0].grad.abs().sum() > 0
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tokens.values())
    assert all(p.grad is None for p in case.model.parameters())


@pytest.mark.parametrize("case", REMOTE, indirect=True)
def test_a_served_box_answers_as_the_local_one(case):
    box, local = case.box, case.local
    assert box.spec.fingerprint() == local.spec.fingerprint()
    if box.spec.modality == "text":
        rb, lb = box.embed(TEXTS), local.embed(TEXTS)
        assert torch.equal(rb.embeds, lb.embeds) and torch.equal(rb.mask, lb.mask)
    w = torch.randn(box.spec.output_dim, generator=torch.Generator().manual_seed(1))
    answers = []
    for b in (box, local):
        x = box_inputs(b, reference=local)
        tokens = entry_tokens(b.spec, requires_grad=True)
        out = b.forward(*x, tokens or None)
        (out @ w).pow(2).sum().backward()
        answers.append((out.detach(), x[0].grad, {k: t.grad for k, t in tokens.items()}))
    (ro, rg, rt), (lo, lg, lt) = answers
    # float rounding on the server's thread, relative to the size of the gradient (SigLIP's are large)
    assert (ro - lo).abs().max() <= 1e-6 and (rg - lg).abs().max() <= 1e-6 * max(1.0, float(lg.abs().max()))
    assert rt.keys() == lt.keys() and all((rt[k] - lt[k]).abs().max() <= 1e-6 for k in rt)
    assert torch.allclose(box.encode(inputs(box)), local.encode(inputs(box)), atol=1e-6)
