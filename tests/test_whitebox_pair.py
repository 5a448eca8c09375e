"""The white-box image-text baseline: both towers of a tiny random CLIP (SigLIP, BLIP) owned,
LoRA through PEFT or fully fine-tuned, with the gray-box image-text model's loss and metrics."""

from __future__ import annotations

import pytest
import torch

from exotune.bench.tiny_clip import shape_captions
from exotune.boxes.loading import load_pair_model
from exotune.boxes.pairs import PAIRS
from exotune.errors import ConfigError
from exotune.graybox import DGAConfig
from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever
from exotune.train import TrainConfig, Trainer
from exotune.whitebox import WhiteBoxConfig, WhiteBoxPairRetriever

from .conftest import build_tiny_clip
from .pair_models import build_pair

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["clip", "siglip", "blip"]


def tiny(family: str):
    return build_tiny_clip(seed=0) if family == "clip" else build_pair(family, seed=0)


def white(family: str, wb: WhiteBoxConfig | None = None) -> WhiteBoxPairRetriever:
    torch.manual_seed(0)
    return WhiteBoxPairRetriever(*tiny(family), wb)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["lora", "full-ft"])
def test_untrained_equals_zero_shot_on_the_same_weights(family, mode):
    data = shape_captions(1)
    wb = None if mode == "lora" else WhiteBoxConfig.full_ft()
    model = white(family, wb)
    none = DGAConfig.variant("none")
    zero = ImageTextRetriever(*PAIRS[family].boxes(*tiny(family)), none, none, ImageTextConfig(learn_temperature=False))
    torch.testing.assert_close(model.encode_texts(data.captions), zero.encode_texts(data.captions))
    torch.testing.assert_close(model.encode_images(data.images), zero.encode_images(data.images))
    assert model.evaluate(data) == zero.evaluate(data)
    assert model.config.loss == zero.config.loss  # the family's own loss, as the gray-box rows'


def _fit(model, epochs: int = 3):
    train, val = shape_captions(2, seed=1), shape_captions(1, seed=2)
    cfg = TrainConfig(epochs=epochs, batch_size=9, lr=1e-2, patience=epochs, seed=0, select_metric="mean_recall")
    return Trainer(cfg, progress=False).fit(model, train, val)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.model.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_its_tensors_in_both_towers(family):
    model = white(family)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    scale = {"log_scale", "logit_bias"}  # the loss's own (SigLIP's held at the model's values)
    lora = trainable - scale
    assert lora and all("lora_" in n for n in lora)
    towers = {n.split(".")[1] for n in lora}
    assert {"vision_model"} < towers and towers & {"text_model", "text_encoder"}  # both towers
    assert set(model.state_dict()) - scale == lora  # never the frozen base weights
    assert model.num_trainable() == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    before = _snapshot(model)
    result = _fit(model)
    after = _snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= {n.removeprefix("model.") for n in lora}  # frozen weights untouched
    assert any(".lora_B." in n for n in changed) and result.steps > 0
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]


def test_full_fine_tuning_trains_every_weight_of_both_towers():
    model = white("clip", WhiteBoxConfig.full_ft())
    on_path = [n for n, _ in model.model.named_parameters() if n != "logit_scale"]  # ours is log_scale
    assert all(p.requires_grad for n, p in model.model.named_parameters() if n in on_path)
    assert model.num_trainable() == sum(p.numel() for n, p in model.model.named_parameters() if n in on_path) + 1
    before = _snapshot(model)
    _fit(model, epochs=1)
    after = _snapshot(model)
    for name in ("text_model.embeddings.token_embedding.weight", "vision_model.embeddings.patch_embedding.weight"):
        assert not torch.equal(before[name], after[name])  # the token table and the pixels' patches too
    assert torch.equal(before["logit_scale"], after["logit_scale"])  # the model's own: not on the path


def test_what_cannot_be_trained_is_said(tmp_path):
    model, tokenizer = build_tiny_clip(seed=0)
    with pytest.raises(ConfigError, match="no linear layer"):  # BERT's names: no CLIP layer has them
        WhiteBoxPairRetriever(model, tokenizer, WhiteBoxConfig.lora())
    with pytest.raises(ConfigError, match="both towers: no layer of vision_model"):  # BLIP's text names only
        WhiteBoxPairRetriever(*build_pair("blip"), WhiteBoxConfig.lora())
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ConfigError, match="not an image-text pair"):
        WhiteBoxPairRetriever(bert, tokenizer)
    with pytest.raises(ConfigError, match="saves no adapter"):
        white("clip").save_pretrained(tmp_path / "out")
    with pytest.raises(ConfigError, match="open_clip"):
        load_pair_model("open_clip:ViT-B-32@laion2b_s34b_b79k")


def test_a_clip_folder_loads_as_its_boxes_would(tmp_path):
    build_tiny_clip(tmp_path / "clip")
    data = shape_captions(1)
    model = WhiteBoxPairRetriever.from_backbone(str(tmp_path / "clip"))
    assert model.image_box.spec.image.resize == 32  # the folder's own preprocessing
    zero = white("clip")
    torch.testing.assert_close(model.encode_images(data.images), zero.encode_images(data.images))


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_video_towers_start_as_zero_shot_and_train_lora_through_the_frames(tmp_path, pooling):
    from exotune.bench.tiny_clip import shape_videos
    from exotune.tasks.video_text import VideoTextConfig, VideoTextRetriever
    from exotune.whitebox import WhiteBoxVideoRetriever

    data = shape_videos(tmp_path, frames=2)
    cfg = VideoTextConfig(frames=2, temporal_pooling=pooling)
    model = WhiteBoxVideoRetriever(*build_tiny_clip(seed=0), None, cfg)
    none = DGAConfig.variant("none")
    zero = VideoTextRetriever(*PAIRS["clip"].boxes(*build_tiny_clip(seed=0)), none, none, cfg)
    torch.testing.assert_close(model.encode_videos(data.videos), zero.encode_videos(data.videos))
    assert model.evaluate(data) == zero.evaluate(data) and "t2v_median_rank" in model.evaluate(data)
    model.loss(data).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    vision = [g for n, g in grads.items() if "vision_model" in n and ".lora_B." in n]
    assert vision and all(g is not None and g.abs().sum() > 0 for g in vision)  # through every video's frames
    assert ("image_tower.pool.score" in grads) == (pooling == "attention")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["lora", "full-ft"])
def test_sketch_towers_share_the_owned_vision_tower(tmp_path, family, mode):
    """Sketches and photos cross one owned vision tower: untrained it ranks as the gray-box sketch
    model with no adapters over the same image box; training moves only that tower's weights."""
    from exotune.bench.tiny_clip import shape_sketches
    from exotune.tasks.sketch import SketchConfig, SketchPhotoRetriever
    from exotune.whitebox import WhiteBoxSketchRetriever

    data = shape_sketches(2, 1)
    wb = None if mode == "lora" else WhiteBoxConfig.full_ft()
    torch.manual_seed(0)
    model = WhiteBoxSketchRetriever(*tiny(family), wb, SketchConfig(temperature=0.1))
    none = DGAConfig.variant("none", modality="image")
    box = PAIRS[family].boxes(*tiny(family)).image
    zero = SketchPhotoRetriever(box, box, none, none, SketchConfig(temperature=0.1))
    assert model.sketch_tower is model.photo_tower  # one tower, not two copies
    assert model.evaluate(data) == zero.evaluate(data)
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[0] in ("vision_model", "visual_projection", "vision_proj") for n in trainable)
    assert mode == "full-ft" or all("lora_" in n for n in trainable)
    assert set(model.state_dict()) >= {"log_scale"} and all(
        "lora_" in k for k in model.state_dict() if k != "log_scale"
    ) == (mode == "lora")
    before = _snapshot(model)
    train, val = data.split(0.25)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, patience=1, seed=0, select_metric="map@all")
    Trainer(cfg, progress=False).fit(model, train, val)
    after = _snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable
    with pytest.raises(ConfigError, match="sketch-photo retriever is a benchmark baseline"):
        model.save_pretrained(tmp_path / "out")
