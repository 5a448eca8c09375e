"""Tiny random text models of each supported family, with tokenizers laid out as theirs, saved
to a folder so that they load through the library's own loader."""

from __future__ import annotations

from pathlib import Path

import torch

from .conftest import WORDS

# (special tokens first in the vocabulary, template, pad token, padding side)
BERT_LAYOUT = (["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[CLS] $A [SEP]", "[PAD]", "right")
ROBERTA_LAYOUT = (["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", "<pad>", "right")
LLAMA_LAYOUT = (["<unk>", "<s>", "</s>"], "<s> $A", None, "left")
SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
ENCODERS = ("roberta", "xlm-roberta", "mpnet", "deberta-v2", "modernbert")
DECODERS = ("qwen2", "llama")
FAMILIES = (*ENCODERS, *DECODERS)


def layout_of(family: str):
    if family in ("roberta", "xlm-roberta", "mpnet"):
        return ROBERTA_LAYOUT
    return LLAMA_LAYOUT if family == "llama" else BERT_LAYOUT


def byte_level_tokenizer():
    """A byte-level BPE learnt on the test words, ending each text with <|endoftext|>, as Qwen2's
    does (transformers rebuilds a Qwen2 model's tokenizer as its own byte-level BPE class)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([" ".join(WORDS)] * 3 + WORDS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|endoftext|>", padding_side="left"
    )


def tiny_tokenizer(family: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if family == "qwen2":
        return byte_level_tokenizer()
    specials, template, pad, side = layout_of(family)
    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    unk = "<unk>" if "<unk>" in vocab else "[UNK]"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    marks = [t for t in template.split() if t != "$A"]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(t, vocab[t]) for t in marks])
    first, last = (
        (marks[0], marks[-1]) if len(marks) == 2 else (marks[0] if template.startswith("<s>") else None, marks[-1])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        pad_token=pad,
        padding_side=side,
        bos_token=first,
        eos_token=last if family != "llama" else "</s>",
        cls_token=first if family not in DECODERS else None,
    )


def tiny_config(family: str, tokenizer):
    import transformers as hf

    n, pad = len(tokenizer), tokenizer.pad_token_id
    if family in ("roberta", "xlm-roberta"):
        cls = hf.RobertaConfig if family == "roberta" else hf.XLMRobertaConfig
        return cls(vocab_size=n, max_position_embeddings=34, pad_token_id=pad, type_vocab_size=1, **SMALL)
    if family == "mpnet":
        return hf.MPNetConfig(vocab_size=n, max_position_embeddings=34, pad_token_id=pad, **SMALL)
    if family == "deberta-v2":
        return hf.DebertaV2Config(
            vocab_size=n,
            max_position_embeddings=32,
            pad_token_id=pad,
            type_vocab_size=0,
            relative_attention=True,
            position_buckets=8,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            **SMALL,
        )
    if family == "modernbert":
        cls_id, sep = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
        return hf.ModernBertConfig(
            vocab_size=n,
            max_position_embeddings=64,
            pad_token_id=pad,
            cls_token_id=cls_id,
            sep_token_id=sep,
            bos_token_id=cls_id,
            eos_token_id=sep,
            global_attn_every_n_layers=2,
            local_attention=8,
            **SMALL,
        )
    cls = {"qwen2": hf.Qwen2Config, "llama": hf.LlamaConfig}[family]
    return cls(
        vocab_size=n,
        max_position_embeddings=64,
        num_key_value_heads=1,
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SMALL,
    )


def build_family(folder: Path, family: str, seed: int = 0) -> Path:
    """A randomly initialised model of ``family`` and its tokenizer, saved to ``folder``."""
    from transformers import AutoModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(family)
    torch.manual_seed(seed)
    AutoModel.from_config(tiny_config(family, tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
