"""The owner's prompts on a served text box: each prompt is served as the same box with that
prompt (``/prompt/<name>``), ``RemoteBox.prompted(name)`` reaches it, and the retrieval task
puts the query and document prompts on its towers through a served box as through a local one."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")

from exotune.boxes import load_box  # noqa: E402
from exotune.boxes.text import for_role  # noqa: E402
from exotune.data.beir import Corpus  # noqa: E402
from exotune.errors import ConfigError  # noqa: E402
from exotune.graybox import DGAConfig  # noqa: E402
from exotune.tasks.retrieval import DualEncoder, RetrievalConfig  # noqa: E402

from .serve_helpers import input_grads, make_app, remote  # noqa: E402
from .test_prompts import TEXTS, st_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    folder = st_folder(tmp_path_factory.mktemp("st"), include_prompt=False)
    box = load_box(str(folder), access="dark-gray")
    return box, remote(make_app(box))


@pytest.mark.parametrize("role, name", [("query", "query"), ("document", "document")])
def test_a_served_box_applies_the_prompt_each_role_asks_for(boxes, role, name):
    box, far = boxes
    local, served = for_role(box, role), for_role(far, role)
    assert served.spec == local.spec and served.spec.prompt == name
    local_batch, served_batch = local.embed(TEXTS), served.embed(TEXTS)
    torch.testing.assert_close(served_batch.embeds, local_batch.embeds)  # the prompt's tokens included
    torch.testing.assert_close(served.encode(TEXTS), local.encode(TEXTS), atol=1e-5, rtol=1e-4)
    out_l, grad_l, _ = input_grads(local, local, TEXTS)
    out_r, grad_r, _ = input_grads(served, local, TEXTS)
    torch.testing.assert_close(out_r, out_l, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_r, grad_l, atol=1e-6, rtol=1e-4)


def test_retrieval_towers_take_their_prompts_through_a_served_box(boxes):
    box, far = boxes
    local, served = (DualEncoder(b, DGAConfig(), RetrievalConfig()) for b in (box, far))
    assert served.query_tower.box.spec.prompt == "query" and served.doc_tower.box.spec.prompt == "document"
    served.load_state_dict(local.state_dict())
    torch.testing.assert_close(served.encode_queries(TEXTS), local.encode_queries(TEXTS), atol=1e-5, rtol=1e-4)
    corpus = Corpus(ids=["a", "b"], titles=["", ""], texts=TEXTS)
    torch.testing.assert_close(served.encode_corpus(corpus), local.encode_corpus(corpus), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="no prompt 'passage'"):
        far.prompted("passage")


def test_serve_lists_the_prompt_routes_at_start(tmp_path, monkeypatch, capsys):
    from exotune.cli import main
    from exotune.cli import serve as serve_cli

    monkeypatch.setattr(serve_cli, "run_server", lambda *a, **k: None)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = st_folder(tmp_path / "st", include_prompt=False)
    assert main(["serve", "--model", str(folder), "--no-auth", "--port", "8123"]) == 0
    err = capsys.readouterr().err
    for name in ("query", "document"):
        assert f"http://127.0.0.1:8123/prompt/{name}/v1/" in err, err
