"""Black-box clients over real HTTP (the openai SDK against a local server), the cache, retries."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from exotune.ea import (
    CallableClient,
    Ledger,
    OpenAIChatClient,
    OpenAIEmbeddingClient,
    ResponseCache,
    parse_label,
)
from exotune.ea.blackbox import normalise_url
from exotune.ea.prompt import PromptTemplate, scores_from_logprobs
from exotune.ea.testing import FAULT_DRILLS, fault_drill
from exotune.errors import BlackBoxError, ConfigError, DataError

from .ea_fakes import COLOURS, FakeOpenAI, colour_task, one_blas_thread  # noqa: F401

FAST = {"backoff": 0.01, "backoff_max": 0.05, "timeout": 2.0}


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


def chat(server, **kw):
    return OpenAIChatClient("fake-model", base_url=server.base_url, api_key="k", **{**FAST, **kw})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("blue", 1),
        (" Blue. ", 1),
        ("'green'", 2),
        ("Label: red", 0),
        ("The label is green", 2),
        ("it is clearly blue!", 1),
        ("bluee", 1),
        ("purple", None),
        ("", None),
        (None, None),
        ("red or blue", None),
    ],
)
def test_parse_label(answer, expected):
    assert parse_label(answer, COLOURS) == expected


def test_parse_label_prefers_longest_name():
    names = ["card", "card_arrival", "card_linking"]
    assert parse_label("card arrival", names) == 1
    assert parse_label("card_linking", names) == 2


def test_scores_from_logprobs():
    s = scores_from_logprobs([("card", -0.1), (" top", -3.0), ("zzz", -1.0)], ["card_a", "card_b", "top_up"])
    assert s is not None and abs(sum(s) - 1) < 1e-9 and s[0] == s[1] > s[2] > 0
    assert scores_from_logprobs([("zzz", -0.1)], COLOURS) is None


def test_prompt_lists_labels_and_examples():
    msgs = PromptTemplate(examples=[("a red car", "red")]).render("the sky", COLOURS)
    assert "- green" in msgs[1]["content"] and "Label: red" in msgs[1]["content"]
    with pytest.raises(ConfigError, match="text"):
        PromptTemplate(template="no field")


def test_chat_labels_scores_and_ledger(server):
    data = colour_task(6)
    client = chat(server, price_in=1.0, price_out=2.0)
    ledger = Ledger()
    outs = client.run(data.texts, COLOURS, ledger)
    assert [o.label for o in outs] == data.labels
    assert all(o.scores is not None and o.confidence is not None for o in outs)
    assert len(server.calls("chat")) == 6
    assert (ledger.calls, ledger.requests, ledger.prompt_tokens, ledger.completion_tokens) == (6, 6, 120, 12)
    assert ledger.cost == pytest.approx((120 * 1 + 12 * 2) / 1e6)


def test_chat_without_logprobs_gives_no_scores(server):
    server.logprobs = False
    outs = chat(server).run(colour_task(3).texts, COLOURS)
    assert all(o.scores is None and o.confidence is None and o.label is not None for o in outs)


def test_garbage_answer_is_recorded_not_raised(server):
    server.faults = ["garbage"]
    ledger = Ledger()
    outs = chat(server, max_concurrency=1).run(colour_task(3).texts, COLOURS, ledger)
    bad = [o for o in outs if o.label is None]  # the first request sent: the shortest text
    assert len(bad) == 1 and "purple" in bad[0].text and ledger.unparseable == 1


def test_retries_on_429_500_and_timeout(server):
    server.faults = ["429", "500", "sleep"]
    ledger = Ledger()
    out = chat(server, timeout=0.3).run(["the sky is blue"], COLOURS, ledger)
    assert out[0].label == 1
    assert len(server.calls("chat")) == 4
    assert (ledger.requests, ledger.retries, ledger.calls) == (4, 3, 1)


def test_persistent_5xx_gives_clear_error(server):
    server.faults = ["500"] * 10
    with pytest.raises(BlackBoxError, match="after 3 attempts.*500"):
        chat(server, max_retries=2).run(["the sky is blue"], COLOURS)
    assert len(server.calls("chat")) == 3


@pytest.mark.parametrize(("kind", "client"), FAULT_DRILLS)
def test_every_fault_is_retried_then_reported_clearly(kind, client):
    """Rate limits, 5xx, timeouts, reset connections and malformed 200 answers (HTML, cut JSON,
    an empty object: once raw AttributeErrors and JSONDecodeErrors) are retried to the right
    answer once, and end in a BlackBoxError when they persist; a 400 is reported at once."""
    result = fault_drill(kind, client)
    assert result["ok"], result


def test_client_error_is_not_retried(server):
    server.faults = ["400"]
    with pytest.raises(BlackBoxError, match="400"):
        chat(server).run(["the sky is blue"], COLOURS)
    assert len(server.calls("chat")) == 1


def test_cache_resumes_after_crash_without_repeating_calls(server, tmp_path):
    texts = colour_task(8).texts
    server.faults = [None, None, None, "400"]  # the 4th request fails for good: the run "crashes"
    with pytest.raises(BlackBoxError):
        chat(server, max_concurrency=1, cache=ResponseCache(tmp_path / "c.sqlite")).run(texts, COLOURS)
    assert len(server.calls("chat")) == 4
    ledger = Ledger()  # a new process: a new client and cache object over the same file
    outs = chat(server, max_concurrency=1, cache=ResponseCache(tmp_path / "c.sqlite")).run(texts, COLOURS, ledger)
    assert [o.label for o in outs] == colour_task(8).labels
    answered = [t for t in server.calls("chat")]
    assert len(answered) == 4 + 5 and ledger.cache_hits == 3 and ledger.calls == 5
    assert len(set(answered[:3] + answered[4:])) == 8  # nothing answered was asked again
    chat(server, cache=ResponseCache(tmp_path / "c.sqlite")).run(texts, COLOURS)
    assert len(server.calls("chat")) == 9


def test_cache_key_includes_prompt(server, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    chat(server, cache=cache).run(["the sky is blue"], COLOURS)
    chat(server, cache=cache, prompt=PromptTemplate(system="Be brief.")).run(["the sky is blue"], COLOURS)
    assert len(server.calls("chat")) == 2


def test_cache_is_keyed_by_endpoint_and_model_not_the_model_name_alone(server, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    chat(server, cache=cache).run(["the sky is blue"], COLOURS)
    with FakeOpenAI(answer=lambda text: "red") as other:  # another server, a model of the same name
        outs = chat(other, cache=cache).run(["the sky is blue"], COLOURS)
        assert len(other.calls("chat")) == 1 and outs[0].label == 0  # its own answer, not the cache's
    held = {d["endpoint"] for d in cache.endpoints().values()}
    assert held == {normalise_url(server.base_url), normalise_url(other.base_url)}
    respelt = server.base_url.upper().replace("/V1", "/v1/")
    OpenAIChatClient("fake-model", base_url=respelt, api_key="k", cache=cache, **FAST).run(["the sky is blue"], COLOURS)
    assert len(server.calls("chat")) == 1  # the same endpoint spelt otherwise: the cache answers


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://LocalHost:80/v1/", "http://localhost/v1"),
        ("https://api.example.com:443/v1", "https://api.example.com/v1"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://[::1]:9000/v1//", "http://[::1]:9000/v1"),
    ],
)
def test_normalise_url(url, expected):
    assert normalise_url(url) == expected


def test_every_client_shows_the_box_the_same_label_texts(server):
    """card_arrival is shown as 'card arrival' (then the template) by every client."""
    names, template = ["card_arrival", "lost_card"], "a question about {}"
    expected = ["a question about card arrival", "a question about lost card"]
    emb = OpenAIEmbeddingClient("emb", base_url=server.base_url, api_key="k", label_template=template, **FAST)
    emb.run(["my card has not arrived"], names)
    assert server.calls("embeddings")[0] == expected
    seen = []
    CallableClient(lambda t, names: seen.append(t) or [1.0, 0.0], returns="embeddings", label_template=template).run(
        ["x"], names
    )
    assert seen[:2] == expected
    with FakeOpenAI(answer=lambda text: "A question about lost card.") as words:
        assert chat(words, label_template=template).run(["where is my card"], names)[0].label == 1
    with pytest.raises(ConfigError, match="label_template"):
        chat(server, label_template="no slot")


def test_duplicate_inputs_are_asked_once(server):
    outs = chat(server).run(["a red cup", "a red cup", "a blue cup"], COLOURS)
    assert [o.label for o in outs] == [0, 0, 1] and len(server.calls("chat")) == 2


def test_embeddings_client_batches_and_labels(server):
    data = colour_task(10)
    client = OpenAIEmbeddingClient("emb", base_url=server.base_url, api_key="k", batch_size=4, **FAST)
    outs = client.run(data.texts, COLOURS)
    assert len(server.calls("embeddings")) == 1 + 3  # the label names, then 3 batches
    assert all(len(o.embedding) == 8 and abs(sum(o.scores) - 1) < 1e-6 for o in outs)
    assert sum(o.label == y for o, y in zip(outs, data.labels, strict=True)) >= 7


def test_embeddings_are_arrays_and_come_back_from_the_cache_unchanged(server, tmp_path):
    texts = colour_task(6).texts

    def client():
        return OpenAIEmbeddingClient(
            "emb",
            base_url=server.base_url,
            api_key="k",
            batch_size=4,
            cache=ResponseCache(tmp_path / "c.sqlite"),
            **FAST,
        )

    fresh, cached = client().run(texts, COLOURS), client().run(texts, COLOURS)
    assert len(server.calls("embeddings")) == 1 + 2  # the second run is all cache hits
    for a, b in zip(fresh, cached, strict=True):
        assert a.embedding.dtype == b.embedding.dtype == np.float32 and a.scores.dtype == b.scores.dtype == np.float64
        np.testing.assert_array_equal(a.embedding, b.embedding)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_empty_text_is_rejected_before_any_call(server):
    with pytest.raises(DataError, match="input 1"):
        chat(server).run(["fine", "  "], COLOURS)
    assert server.calls() == []


def test_callable_client_forms():
    texts = ["a red cup", "a blue cup"]
    by_name = CallableClient(lambda t, labels: "red" if "red" in t else "blue")
    assert [o.label for o in by_name.run(texts, COLOURS)] == [0, 1]
    by_index = CallableClient(lambda ts, labels: [0 if "red" in t else 1 for t in ts], batched=True)
    assert [o.label for o in by_index.run(texts, COLOURS)] == [0, 1]
    scores = CallableClient(lambda t, labels: [0.1, 0.7, 0.2], returns="scores").run(texts, COLOURS)
    assert scores[0].label == 1 and scores[0].confidence == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="returns"):
        CallableClient(len, returns="bogus")


def test_batches_hold_texts_of_like_length_and_answers_keep_the_input_order():
    batches = []

    def fn(texts, labels):
        batches.append([len(t) for t in texts])
        return ["red" if "red" in t else "blue" for t in texts]

    texts = ["red " * n + "x" for n in (5, 1, 4, 2, 6, 3)] + ["blue"]
    outs = CallableClient(fn, batched=True, batch_size=3, max_concurrency=1).run(texts, COLOURS)
    assert [o.label for o in outs] == [0] * 6 + [1]
    assert batches == [sorted(len(t) for t in texts)[i : i + 3] for i in (0, 3, 6)]


def test_callable_concurrency_limit_and_timeout():
    state = {"now": 0, "max": 0}

    async def slow(text, labels):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.02)
        state["now"] -= 1
        return "red"

    CallableClient(slow, max_concurrency=3).run([f"t{i}" for i in range(12)], COLOURS)
    assert state["max"] == 3

    async def hang(text, labels):
        await asyncio.sleep(5)

    with pytest.raises(BlackBoxError, match="timed out"):
        CallableClient(hang, timeout=0.05, max_retries=1, backoff=0.01).run(["x"], COLOURS)


def test_run_inside_an_event_loop():
    async def main():
        return CallableClient(lambda t, labels: "blue").run(["x"], COLOURS)

    assert asyncio.run(main())[0].label == 1


def test_blocking_calls_run_inline_only_in_a_private_loop():
    import threading

    from exotune.ea.blackbox import _PRIVATE_LOOP

    client = CallableClient(lambda text, labels: "red", max_concurrency=1)
    here = threading.get_ident()

    async def users_loop():  # someone else's loop: never blocked, the call goes to a thread
        return await client._blocking(threading.get_ident)

    async def private_loop():  # what run() makes: one request at a time runs right here
        _PRIVATE_LOOP.set(True)
        return await client._blocking(threading.get_ident)

    assert asyncio.run(users_loop()) != here
    assert asyncio.run(private_loop()) == here
    client.max_concurrency = 2
    assert asyncio.run(private_loop()) != here
