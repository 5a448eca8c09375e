"""What a box reveals: the owner-secret input basis, the keyed digest, opaque entry points and
the black level's spec."""

from __future__ import annotations

import pytest
import torch

from exotune.boxes import load_box
from exotune.boxes.base import model_digest, weights_hash
from exotune.boxes.basis import OwnerBasis, basis_matrix, keyed_digest
from exotune.boxes.entry_points import entry_point_options
from exotune.boxes.spec import BLACK_FIELDS, BoxSpec
from exotune.errors import ConfigError, SpecMismatchError
from exotune.graybox import DGAConfig, EntryTokensConfig
from exotune.tasks.classification import ClassificationConfig, TextClassifier

from .conftest import backbone_module, colour_data

SECRET, OTHER_SECRET = "owner-secret-0123456789abcdef", "another-owner-secret-9876543210"
TEXTS = ["the red car", "a sky is very blue today", "green leaf and small car"]


def boxes(folder, **kwargs):
    """The same backbone with and without the owner's secret."""
    opts = {"pooling": "mean", "normalize": False, **kwargs}
    return load_box(str(folder), **opts), load_box(str(folder), owner_secret=SECRET, **opts)


# -- the basis --------------------------------------------------------------------------------


def test_basis_is_orthogonal_and_fixed_by_the_secret():
    r = basis_matrix(SECRET, 16)
    assert torch.allclose(r @ r.T, torch.eye(16, dtype=r.dtype), atol=1e-12)
    assert torch.equal(r, basis_matrix(SECRET, 16))  # a restart rebuilds the same R
    assert not torch.allclose(r, basis_matrix(OTHER_SECRET, 16))
    assert OwnerBasis(SECRET, 16).id == OwnerBasis(SECRET, 16).id != OwnerBasis(OTHER_SECRET, 16).id
    assert "tensor" not in repr(OwnerBasis(SECRET, 16))
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        basis_matrix("short", 16)


def test_embeddings_are_no_longer_the_models_rows_but_outputs_are_unchanged(tiny_backbone):
    plain, owned = boxes(tiny_backbone)
    rows = backbone_module(plain).get_input_embeddings().weight  # (V, D), what the attack collected
    mine, theirs = plain.embed(TEXTS), owned.embed(TEXTS)

    def matches(batch):  # real tokens whose embedding equals a row of word_embeddings bit for bit
        flat = batch.embeds[batch.mask.bool()]  # (N, D); padding is the zero row in any basis
        return int((flat[:, None, :] == rows[None]).all(-1).any(-1).sum())

    assert matches(mine) == int(mine.mask.sum())  # the attack, without a basis
    assert matches(theirs) == 0
    assert torch.equal(mine.mask, theirs.mask)
    # what the basis does not hide: the geometry (inner products) of the embeddings
    a, b = mine.embeds.reshape(-1, 16), theirs.embeds.reshape(-1, 16)
    assert torch.allclose(a @ a.T, b @ b.T, atol=1e-5)
    assert torch.equal(owned.encode(TEXTS), plain.encode(TEXTS))  # encode never leaves the box
    out = owned.forward(theirs.embeds, theirs.mask)
    assert torch.allclose(out, plain.forward(mine.embeds, mine.mask), atol=1e-5)


def test_the_basis_is_undone_before_entry_tokens_are_injected(tiny_backbone):
    plain, owned = boxes(tiny_backbone, entry_points="all", entry_tokens_max=4)
    r = basis_matrix(SECRET, 16).float()
    tokens = {"0": torch.randn(2, 16), "1": torch.randn(2, 16)}
    a, b = plain.embed(TEXTS), owned.embed(TEXTS)
    out_plain = plain.forward(a.embeds, a.mask, {f"layer.{k}": t for k, t in tokens.items()})
    out_owned = owned.forward(b.embeds, b.mask, {f"point.{k}": t @ r for k, t in tokens.items()})
    assert torch.allclose(out_plain, out_owned, atol=1e-5)


def _mapped_run(box, config, rotate: torch.Tensor | None, steps: int = 6) -> list[float]:
    """Losses of SGD on a DGA/LGA classifier; ``rotate`` maps the trainable input-side
    parameters to the box's basis first (what the same run is in those coordinates)."""
    torch.manual_seed(0)
    model = TextClassifier(box, ["red", "blue", "green"], config, ClassificationConfig(head="prototype"))
    if rotate is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".input_adapter." in f".{name}" or ".entry_tokens." in f".{name}":
                    p.copy_(p @ rotate)
    data = colour_data(32, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for step in range(steps):
        part = slice(8 * (step % 4), 8 * (step % 4) + 8)
        loss = torch.nn.functional.cross_entropy(model(data.texts[part]), torch.as_tensor(data.labels[part]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["dga", "lga"])
def test_dga_and_lga_train_the_same_in_the_secret_basis(tiny_backbone, kind):
    lga = kind == "lga"
    config = DGAConfig.variant("both", entry_tokens=EntryTokensConfig(tokens=2)) if lga else DGAConfig.variant("both")
    plain, owned = boxes(tiny_backbone, **({"entry_points": "all", "entry_tokens_max": 4} if lga else {}))
    before = _mapped_run(plain, config, None)
    after = _mapped_run(owned, config, basis_matrix(SECRET, 16).float())
    assert before[0] != before[-1]  # it trains
    assert before == pytest.approx(after, rel=1e-4, abs=1e-5)
    unmapped = _mapped_run(owned, config, None)  # the same numbers in the wrong basis: another run
    assert unmapped != pytest.approx(before, rel=1e-4, abs=1e-5)


# -- keyed digest, fingerprint, entry point names ---------------------------------------------


def test_the_digest_is_keyed_by_the_owner_secret(tiny_backbone):
    plain, owned = boxes(tiny_backbone)
    model = backbone_module(plain)
    assert plain.spec.model_digest == model_digest(model) == weights_hash(model)[:16]  # local: plain
    assert owned.spec.model_digest == load_box(str(tiny_backbone), owner_secret=SECRET).spec.model_digest
    assert owned.spec.model_digest == keyed_digest(weights_hash(model), SECRET)
    assert owned.spec.model_digest != plain.spec.model_digest
    assert owned.spec.model_digest not in weights_hash(model)
    assert load_box(str(tiny_backbone), owner_secret=OTHER_SECRET).spec.model_digest != owned.spec.model_digest


def test_the_fingerprint_covers_the_basis(tiny_backbone, tmp_path):
    plain, owned = boxes(tiny_backbone)
    no_basis = load_box(str(tiny_backbone), pooling="mean", normalize=False, owner_secret=SECRET, basis=False)
    assert owned.spec.input_basis and not no_basis.spec.input_basis and "input_basis" not in plain.spec.to_dict()
    assert no_basis.spec.model_digest == owned.spec.model_digest  # same owner, so only the basis differs
    assert len({b.spec.fingerprint() for b in (plain, owned, no_basis)}) == 3
    assert torch.equal(no_basis.embed(TEXTS).embeds, plain.embed(TEXTS).embeds)
    assert BoxSpec.from_dict(owned.spec.to_dict()) == owned.spec
    restarted = load_box(str(tiny_backbone), pooling="mean", normalize=False, owner_secret=SECRET)
    assert restarted.spec.fingerprint() == owned.spec.fingerprint()
    clf = TextClassifier(owned, ["red", "blue", "green"], DGAConfig(), ClassificationConfig(head="prototype"))
    clf.save_pretrained(tmp_path / "adapter")
    TextClassifier.from_pretrained(tmp_path / "adapter", restarted)  # same secret: loads
    for other in (plain, no_basis):
        with pytest.raises(SpecMismatchError, match="input_basis"):
            TextClassifier.from_pretrained(tmp_path / "adapter", other)


def test_entry_points_of_an_owned_box_do_not_name_layers(tiny_backbone):
    plain, owned = boxes(tiny_backbone, entry_points=[1])
    assert [e.name for e in plain.spec.entry_points] == ["layer.1"]
    assert [e.name for e in owned.spec.entry_points] == ["point.0"]  # not which layer, nor of how many
    with pytest.raises(ConfigError, match="connect to it"):
        entry_point_options(owned.spec.entry_points)


# -- the black level's spec -------------------------------------------------------------------


def test_black_spec_shows_only_what_a_black_box_client_needs(tiny_backbone):
    black = load_box(str(tiny_backbone), access="black", owner_secret=SECRET)
    public = black.spec.public()
    assert set(public) == {*BLACK_FIELDS, "limits"} and public["limits"] == {"max_batch": black.spec.limits.max_batch}
    for hidden in ("input_kind", "input_shape", "text_max_length", "entry_points", "pooling", "input_basis"):
        assert hidden not in public
    again = BoxSpec.from_dict(public)
    assert (again.access, again.output_dim, again.model_digest) == ("black", 16, black.spec.model_digest)
    gray = load_box(str(tiny_backbone))
    assert gray.spec.public() == gray.spec.to_dict()


# -- served ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stateless", [False, True])
@pytest.mark.parametrize("light", [False, True])
def test_a_served_box_in_the_secret_basis_gives_the_local_gradients(tiny_backbone, stateless, light):
    pytest.importorskip("fastapi")
    from .serve_helpers import input_grads, make_app, remote

    options = {"entry_points": "all", "entry_tokens_max": 4} if light else {}
    _, owned = boxes(tiny_backbone, **options)
    box = remote(make_app(owned, stateless=stateless))
    assert box.spec == owned.spec and box.spec.fingerprint() == owned.spec.fingerprint()
    assert torch.equal(box.embed(TEXTS).embeds, owned.embed(TEXTS).embeds)
    entries = {"point.0": torch.randn(2, 16), "point.1": torch.randn(2, 16)} if light else None
    r, loc = input_grads(box, owned, TEXTS, entries), input_grads(owned, owned, TEXTS, entries)
    for a, b in ((r[0], loc[0]), (r[1], loc[1]), *((r[2][k], loc[2][k]) for k in r[2])):
        assert torch.allclose(a, b, atol=1e-6)
    assert r[2].keys() == set(entries or {})


def test_a_black_served_box_shows_the_short_spec_and_still_answers(tiny_backbone):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from exotune.ea import ServedBoxClient

    from .serve_helpers import TOKEN, make_app, remote

    app = make_app(load_box(str(tiny_backbone), access="black", owner_secret=SECRET))
    spec = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}).get("/v1/spec").json()["spec"]
    assert set(spec) == {*BLACK_FIELDS, "limits"} and set(spec["limits"]) == {"max_batch"}
    box = remote(app)
    local = load_box(str(tiny_backbone))
    assert torch.allclose(box.encode(TEXTS), local.encode(TEXTS), atol=1e-6)
    client = ServedBoxClient("http://testserver", TOKEN, http_client=TestClient(app), returns="scores", max_retries=0)
    assert len(client.run(TEXTS, ["red", "blue", "green"])) == len(TEXTS)
    assert client.describe()["model_digest"] == spec["model_digest"] != local.spec.model_digest


# -- exotune serve's owner secret -------------------------------------------------------------


@pytest.fixture
def serve(monkeypatch, tmp_path, tiny_backbone):
    """Run ``exotune serve`` without serving; return (exit code, spec) of each call."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from exotune.cli import main
    from exotune.cli import serve as serve_cli

    apps = []
    monkeypatch.setattr(serve_cli, "run_server", lambda app, host, port, listen=None: apps.append(app))
    monkeypatch.delenv("EXOTUNE_OWNER_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    def run(*args):
        code = main(["serve", "--model", str(tiny_backbone), "--no-auth", *args])
        return code, (TestClient(apps[-1]).get("/v1/spec").json()["spec"] if code == 0 else None)

    return run


def test_serve_generates_keeps_and_reuses_an_owner_secret(serve, tiny_backbone, tmp_path, monkeypatch, capsys):
    code, first = serve()
    kept = tmp_path / "config" / "exotune" / "owner-secret"
    assert code == 0 and kept.is_file() and kept.stat().st_mode & 0o077 == 0  # the owner's only
    assert "generated in" in capsys.readouterr().err
    assert first["input_basis"] and first["model_digest"] != load_box(str(tiny_backbone)).spec.model_digest
    _, again = serve()  # a restart reads the same secret: same spec, adapters stay valid
    assert again == first and "read from" in capsys.readouterr().err
    named = tmp_path / "mine" / "secret"
    _, own = serve("--owner-secret-file", str(named))
    assert (
        named.is_file() and own["model_digest"] != first["model_digest"] and own["input_basis"] != first["input_basis"]
    )
    monkeypatch.setenv("EXOTUNE_OWNER_SECRET", named.read_text())
    assert serve()[1] == own
    _, plain = serve("--no-basis", "--owner-secret-file", str(named))
    assert "input_basis" not in plain and plain["model_digest"] == own["model_digest"]


def test_serve_refuses_a_short_owner_secret(serve, tmp_path, capsys):
    short = tmp_path / "short"
    short.write_text("tiny\n")
    assert serve("--owner-secret-file", str(short))[0] == 2
    assert "too short" in capsys.readouterr().err
