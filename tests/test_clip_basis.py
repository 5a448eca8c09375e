"""A served CLIP text tower hands out token embeddings in the owner's secret basis, as a served
text box does: the rows a user collects through ``embed`` are not the checkpoint's embedding
table, and the box undoes the basis inside, so outputs (and DGA/LGA) are unchanged."""

from __future__ import annotations

import pytest
import torch

from exotune.boxes import clip_boxes
from exotune.errors import ConfigError

from .conftest import build_tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")
SECRET = "a-secret-of-the-owner-32-bytes!!"
TEXTS = ["a photo of a red circle", "a big blue square"]


def test_the_text_tower_hands_out_embeddings_in_the_secret_basis():
    model, tokenizer = build_tiny_clip()
    plain, _ = clip_boxes(model, tokenizer)
    secret, _ = clip_boxes(model, tokenizer, owner_secret=SECRET)
    table = model.text_model.embeddings.token_embedding.weight.detach()  # (V, D): what a public copy has
    rows = secret.embed(TEXTS).embeds.reshape(-1, table.shape[1])  # (B*T, D)
    nearest = torch.cdist(rows, table).min(dim=1).values
    assert nearest.min() > 1e-3  # no row is one of the checkpoint's
    own = plain.embed(TEXTS).embeds.reshape(-1, table.shape[1])
    assert torch.allclose(own.norm(dim=1), rows.norm(dim=1), atol=1e-5)  # a rotation of the model's rows
    assert secret.spec.input_basis and not plain.spec.input_basis  # the fingerprint covers it
    outs = []
    for box in (plain, secret):
        batch = box.embed(TEXTS)
        outs.append(box.forward(batch.embeds, batch.mask))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)  # the box undoes the basis inside
    assert torch.equal(plain.encode(TEXTS), secret.encode(TEXTS))


def test_entry_tokens_are_taken_in_the_secret_basis_too():
    model, tokenizer = build_tiny_clip()
    plain, _ = clip_boxes(model, tokenizer, entry_points=[1])
    secret, _ = clip_boxes(model, tokenizer, entry_points=[1], owner_secret=SECRET)
    (p_name,), (s_name,) = (e.name for e in plain.spec.entry_points), (e.name for e in secret.spec.entry_points)
    outs = []
    for box, name in ((plain, p_name), (secret, s_name)):
        batch = box.embed(TEXTS)
        token = box.embed(["dog"]).embeds[:, 1]  # (1, D): a word's row in the box's own basis
        outs.append(box.forward(batch.embeds, batch.mask, {name: token}))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_basis_false_leaves_the_model_coordinates():
    model, tokenizer = build_tiny_clip()
    plain, _ = clip_boxes(model, tokenizer)
    off, image = clip_boxes(model, tokenizer, owner_secret=SECRET, text_options={"basis": False})
    assert not off.spec.input_basis and not image.spec.input_basis
    assert torch.equal(off.embed(TEXTS).embeds, plain.embed(TEXTS).embeds)
    with pytest.raises(ConfigError, match="text_options"):  # pixels have no basis: not for both towers
        clip_boxes(model, tokenizer, owner_secret=SECRET, basis=False)


def _server(tmp_path, *args):
    from exotune.cli import build_parser
    from exotune.cli.serve import build_server

    folder = tmp_path / "clip"
    if not folder.exists():
        build_tiny_clip(folder)
    serve = ["serve", "--model", str(folder), "--no-auth", "--owner-secret-file", str(tmp_path / "secret")]
    return build_server(build_parser().parse_args([*serve, *args]))


def test_serve_kind_clip_uses_the_basis_and_no_basis_acts_on_it(tmp_path):
    on = _server(tmp_path, "--kind", "clip").state.services
    off = _server(tmp_path, "--kind", "clip", "--no-basis").state.services
    assert on["text"].spec.input_basis and not off["text"].spec.input_basis
    assert not on["image"].spec.input_basis and not off["image"].spec.input_basis
    assert on["text"].spec.model_digest == off["text"].spec.model_digest  # the digest stays keyed


def test_serve_kind_image_refuses_no_basis(tmp_path, capsys):
    from exotune.cli import main

    with pytest.raises(ConfigError, match="--no-basis"):
        _server(tmp_path, "--kind", "image", "--no-basis")
    folder = tmp_path / "clip"
    code = main(["serve", "--model", str(folder), "--no-auth", "--kind", "image", "--no-basis"])
    assert code != 0 and "--no-basis" in capsys.readouterr().err
