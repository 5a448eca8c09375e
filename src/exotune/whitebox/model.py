"""The white-box baseline classifier: an owned encoder (LoRA or fully fine-tuned) + a head.

The same heads, tokenisation, pooling and training-loop protocol as the gray-box
``TextClassifier``, so that ``Trainer`` fits both unchanged and the comparison is about
access, not about plumbing.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from exotune import __version__
from exotune.artifacts import CONFIG_NAME, WEIGHTS_NAME, check_tensors, json_object, read_tensors, saved_config
from exotune.boxes.base import model_digest
from exotune.boxes.loading import DEFAULT_BACKBONE, load_text_encoder
from exotune.errors import ConfigError, SpecMismatchError
from exotune.tasks.artifacts import read_folder_config, task_section
from exotune.tasks.classification import ClassificationConfig
from exotune.tasks.heads import make_head
from exotune.tasks.model import AdapterModelMixin, ClassifierMixin
from exotune.whitebox.config import WhiteBoxConfig
from exotune.whitebox.encoder import LoraState, WhiteBoxEncoder

ARTIFACT_TYPE = "whitebox-classifier"
ENCODER_DIR = "encoder"  # full-ft only: the whole fine-tuned encoder, Hugging Face layout


class WhiteBoxClassifier(LoraState, ClassifierMixin, AdapterModelMixin, nn.Module):
    """Owned encoder + head. In ``lora`` mode ``state_dict()`` holds only what is trained
    (LoRA tensors and head), like the gray-box classifier; in ``full-ft`` mode, everything."""

    _base_prefix = "encoder.model."
    adapter_type = ARTIFACT_TYPE

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        label_names: list[str],
        whitebox: WhiteBoxConfig | None = None,
        config: ClassificationConfig | None = None,
        *,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int | None = None,
        base_model: str | None = None,
        _init_head: bool = True,
    ) -> None:
        super().__init__()
        if len(label_names) < 2:
            raise ConfigError(f"need at least 2 classes, got {label_names!r}")
        self.label_names = list(label_names)
        self.whitebox = whitebox or WhiteBoxConfig()
        self.config = config or ClassificationConfig()
        self.base_model = base_model
        # LoRA leaves the base weights untouched: their digest ties a saved adapter to them.
        self.base_digest = model_digest(model) if self.whitebox.mode == "lora" else None
        self.encoder = WhiteBoxEncoder(
            model, tokenizer, self.whitebox, pooling=pooling, normalize=normalize, max_length=max_length
        )
        # LoRA's B starts at zero and nothing is trained yet: prototypes from this encoder make
        # step 0 the zero-shot classifier, exactly as for the gray box.
        encode = self.encoder.encode if _init_head else None
        self.head = make_head(self.config, self.label_names, self.encoder.output_dim, encode)

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | None,
        label_names: list[str],
        whitebox: WhiteBoxConfig | None = None,
        config: ClassificationConfig | None = None,
        **encoder_kwargs,
    ) -> WhiteBoxClassifier:
        """Load the encoder as ``load_box`` would (same pooling, normalisation, max length)."""
        model, tokenizer, defaults = load_text_encoder(name_or_path)
        return cls(
            model,
            tokenizer,
            label_names,
            whitebox,
            config,
            base_model=name_or_path or DEFAULT_BACKBONE,
            **{**defaults, **encoder_kwargs},
        )

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.head(self.encoder(texts))  # (B, C)

    # -- artifacts ------------------------------------------------------------------------------

    def to_config_dict(self) -> dict:
        enc = self.encoder
        return {
            "type": ARTIFACT_TYPE,
            "library_version": __version__,
            "access": "white",
            "whitebox": self.whitebox.to_dict(),
            "base_model": self.base_model,
            "base_digest": self.base_digest,
            "encoder": {"pooling": enc.pooling, "normalize": enc.normalize, "max_length": enc.max_length},
            "task": {"type": "classification", "labels": self.label_names, **asdict(self.config)},
        }

    def artifact_files(self) -> dict:
        """``lora``: config + LoRA and head tensors only (never the base weights).
        ``full-ft``: config + head tensors + ``encoder/``, the whole model and tokenizer."""
        files = {CONFIG_NAME: self.to_config_dict()}
        if self.whitebox.mode == "lora":
            files[WEIGHTS_NAME] = self.state_dict()
        else:
            files[WEIGHTS_NAME] = {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

            def write_encoder(folder: Path) -> None:
                self.encoder.model.save_pretrained(folder)  # safetensors
                self.encoder.tokenizer.save_pretrained(folder)

            files[ENCODER_DIR] = write_encoder
        return files

    @classmethod
    def from_pretrained(cls, path: str | Path, backbone: str | None = None) -> WhiteBoxClassifier:
        """Load a saved classifier; a LoRA one loads its base from ``backbone`` (default: the
        base it was trained on) and fails if those weights differ."""
        path = Path(path)
        cfg = read_folder_config(path, cls.adapter_type, "white-box folder")  # no box: the base digest below
        with saved_config(path / CONFIG_NAME):
            whitebox = WhiteBoxConfig.from_dict(cfg["whitebox"])
            task = task_section(cfg)
            labels = task.pop("labels")
            encoder_kwargs = json_object(cfg, "encoder")
            task_config = ClassificationConfig.from_dict(task)
        if whitebox.mode == "lora":
            source = backbone or cfg.get("base_model")
            model, tokenizer, _ = load_text_encoder(source)
            digest = model_digest(model)
            if digest != cfg.get("base_digest"):
                raise SpecMismatchError(
                    f"LoRA weights in {path} were trained on base weights {cfg.get('base_digest')}, "
                    f"{source!r} has {digest}"
                )
        else:
            model, tokenizer, _ = load_text_encoder(str(path / ENCODER_DIR))
            source = cfg.get("base_model")
        with saved_config(path / CONFIG_NAME):
            clf = cls(
                model, tokenizer, labels, whitebox, task_config, base_model=source, _init_head=False, **encoder_kwargs
            )
        state = read_tensors(path / WEIGHTS_NAME)
        expected = {
            k: v for k, v in clf.state_dict().items() if whitebox.mode == "lora" or not k.startswith("encoder.")
        }
        check_tensors(state, expected, path / WEIGHTS_NAME)
        if whitebox.mode == "lora":
            clf.load_state_dict(state)
        else:
            clf.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
        clf.eval()
        return clf
