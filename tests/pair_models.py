"""Tiny random image-text models of the families served as pairs (SigLIP, BLIP), built with the
real transformers classes and word-level tokenizers laid out as theirs, optionally saved to a
folder so that they load through the library's own loader."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .conftest import VISION, WORDS

TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16
)
PAIR_FAMILIES = ("siglip", "blip")


def word_tokenizer(specials: list[str], template: str, pad: str, unk: str, **tokens):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    marks = [t for t in template.split() if t != "$A"]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(t, vocab[t]) for t in marks])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, unk_token=unk, **tokens)


def siglip_tokenizer():
    """SigLIP's layout: words then </s>, no start token; padded with </s> (its pad is its eos)."""
    return word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", pad="</s>", unk="<unk>", eos_token="</s>")


def blip_tokenizer():
    """BLIP's (BERT's) layout: [CLS] words [SEP], padded with [PAD]."""
    return word_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
        "[CLS] $A [SEP]",
        pad="[PAD]",
        unk="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def build_pair(family: str, folder: Path | None = None, seed: int = 0):
    """A randomly initialised ``SiglipModel`` or ``BlipForImageTextRetrieval`` (hidden 32, 2 layers,
    16 text positions, 32x32 images) and its tokenizer; saved to ``folder`` when given."""
    import transformers as hf

    torch.manual_seed(seed)
    if family == "siglip":
        tokenizer = siglip_tokenizer()
        eos = tokenizer.eos_token_id
        config = hf.SiglipConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                pad_token_id=eos,
                eos_token_id=eos,
                bos_token_id=eos,
                projection_size=32,
                **TEXT,
            ),
            vision_config=VISION,
        )
        model = hf.SiglipModel(config).eval()
        with torch.no_grad():  # SigLIP's trained values are of this order; the init's are 1 and 0
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-5.0)
    else:
        tokenizer = blip_tokenizer()
        config = hf.BlipConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.cls_token_id,
                sep_token_id=tokenizer.sep_token_id,
                encoder_hidden_size=32,
                **TEXT,
            ),
            # BLIP's vision default draws its weights at std 1e-10: image features near zero,
            # whose normalisation would blow every gradient up
            vision_config={**VISION, "initializer_range": 0.02},
            image_text_hidden_size=16,
        )
        model = hf.BlipForImageTextRetrieval(config).eval()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return model, tokenizer
