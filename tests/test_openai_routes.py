"""The OpenAI-compatible routes of ``exotune serve``, driven by the real openai SDK against a
server the test starts: answers equal the native encode; the EA embeddings client trains on it."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from exotune.cli import build_parser
from exotune.cli.serve import build_server

from .conftest import colour_data
from .ea_fakes import one_blas_thread  # noqa: F401
from .serve_helpers import TOKEN, make_client, running_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def black_app(tiny_backbone, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(TOKEN + "\n")
    args = build_parser("serve").parse_args(
        [
            "serve",
            "--model",
            str(tiny_backbone),
            "--level",
            "black",
            "--tokens-file",
            str(tokens),
            "--model-name",
            "tiny-bert",
        ]
    )
    return build_server(args)


@pytest.fixture(scope="module")
def served(black_app):
    with running_server(black_app) as url:
        yield url


def sdk(url, key=TOKEN):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def native(app, texts):
    answer = make_client(app).post("/v1/encode", json={"texts": texts}, headers={"Accept": "application/json"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    return np.asarray(answer.json()["outputs"], dtype=np.float32)


def test_embeddings_and_models_through_the_openai_sdk(black_app, served):
    client, texts = sdk(served), ["the sky is blue", "a red car", "green leaf"]
    assert [m.id for m in client.models.list()] == ["tiny-bert"]
    expected = native(black_app, texts)
    for fmt in (None, "base64", "float"):  # None: the SDK asks for base64 and decodes it itself
        kwargs = {"encoding_format": fmt} if fmt else {}
        answer = client.embeddings.create(model="tiny-bert", input=texts, **kwargs)
        rows = [d.embedding for d in sorted(answer.data, key=lambda d: d.index)]
        if fmt == "base64":
            rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]
        got = np.asarray(rows, dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert answer.model == "tiny-bert" and answer.object == "list"
    one = client.embeddings.create(model="tiny-bert", input="the sky is blue")
    np.testing.assert_allclose(one.data[0].embedding, expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"dimensions": 3}, "BadRequestError", "dimensions"),
        ({"input": [[1, 2, 3]]}, "BadRequestError", "token ids"),
        ({"model": "gpt-x"}, "NotFoundError", "tiny-bert"),
    ],
)
def test_refusals_are_clear_and_openai_shaped(served, kwargs, error, fragment):
    with pytest.raises(getattr(openai, error)) as info:
        sdk(served).embeddings.create(**{"model": "tiny-bert", "input": ["the sky"], **kwargs})
    assert fragment in info.value.message and info.value.body["message"]


def test_same_tokens_as_the_native_routes(black_app, served):
    with pytest.raises(openai.AuthenticationError):
        sdk(served, key="not-a-token-at-all").models.list()
    assert make_client(black_app, token=None).get("/v1/openapi.json").status_code == 401
    paths = make_client(black_app).get("/v1/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/models", "/v1/encode"} <= set(paths)
    spec = make_client(black_app).get("/v1/spec", headers={"Accept": "application/json"})
    assert spec.json()["spec"]["access"] == "black"


def test_ea_embeddings_client_trains_against_the_served_box(served, tmp_path):
    from exotune.ea import EasyAdapter, OpenAIEmbeddingClient, ResponseCache

    data = colour_data(90, seed=1)
    train, val = data.split(0.3, seed=0)
    client = OpenAIEmbeddingClient(
        "tiny-bert", base_url=f"{served}/v1", api_key=TOKEN, cache=ResponseCache(tmp_path / "c.sqlite")
    )
    model = EasyAdapter(client, ssms=("tfidf-lr",), n_clusters=2, cv_folds=2, random_state=0).fit(train, val)
    assert model.ledgers_["probe"].calls == len(train) + len(val)
    assert model.evaluate(val, compare=False)["ea"]["accuracy"] > 0.8


def test_http_failures_name_the_url_and_what_to_try(served, monkeypatch):
    from exotune.ea import OpenAIEmbeddingClient, ServedBoxClient
    from exotune.errors import BlackBoxError

    fast = {"max_retries": 0, "timeout": 10}
    cases = [
        (OpenAIEmbeddingClient("tiny-bert", base_url=served, api_key=TOKEN, **fast), [served, f"try {served}/v1"]),
        (
            OpenAIEmbeddingClient("tiny-bert", base_url=f"{served}/v1", api_key_env="MY_KEY", **fast),
            [f"{served}/v1", "$MY_KEY", "--api-key-env"],
        ),
        (ServedBoxClient(f"{served}/v1", TOKEN, **fast), ["without /v1", f"try {served}"]),
        (ServedBoxClient(served, "wrong-token-123", **fast), [served, "$EXOTUNE_TOKEN"]),
    ]
    monkeypatch.setenv("MY_KEY", "not-the-token")
    for client, fragments in cases:
        with pytest.raises(BlackBoxError) as info:
            client.run(["the sky is blue"], ["red", "blue"])
        for fragment in fragments:
            assert fragment in str(info.value), (fragment, str(info.value))
