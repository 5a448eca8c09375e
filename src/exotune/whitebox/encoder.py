"""An owned text encoder: the same tokenisation, pooling and normalisation as the box, but
the weights are a submodule the user trains (LoRA through PEFT, or all of them)."""

from __future__ import annotations

import torch
from torch import nn

from exotune.boxes.text import POOLINGS
from exotune.errors import ArtifactError, ConfigError
from exotune.whitebox.config import WhiteBoxConfig

LORA_MARK = "lora_"  # PEFT's LoRA tensors are named ``...lora_A.<adapter>.weight`` / ``lora_B``


def _import_peft():
    try:
        import peft
    except ImportError as err:
        raise ConfigError("LoRA needs Hugging Face PEFT: pip install 'exotune[bench]'") from err
    return peft


def _unused(name: str) -> bool:
    # BERT's pooler (tanh over [CLS]) is never on the path: we pool last_hidden_state like the box.
    return name == "pooler" or name.startswith("pooler.")


def lora_target_names(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Full names of the linear layers whose last name is in ``targets`` (pooler excluded)."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets and not _unused(name)
    ]
    if not names:
        raise ConfigError(
            f"no linear layer of this encoder is named one of {list(targets)}; "
            "pass target_modules that exist (e.g. q_lin, k_lin, v_lin for DistilBERT)"
        )
    return names


def add_lora(model: nn.Module, config: WhiteBoxConfig, names: list[str] | None = None) -> nn.Module:
    """Inject LoRA layers in place; afterwards only the LoRA tensors require grad. ``names``: the
    full names of the layers to adapt (default: ``lora_target_names(model, config.target_modules)``)."""
    peft = _import_peft()
    lora = peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        # full names, so that "dense" never reaches the unused pooler
        target_modules=names if names is not None else lora_target_names(model, config.target_modules),
        bias="none",
    )
    model = peft.inject_adapter_in_model(lora, model)
    for name, p in model.named_parameters():
        p.requires_grad_(LORA_MARK in name)
    return model


class WhiteBoxEncoder(nn.Module):
    """texts -> pooled (and optionally L2-normalised) outputs (B, H), differentiable in the weights."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        config: WhiteBoxConfig,
        *,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        positions = int(getattr(model.config, "max_position_embeddings", 512))
        self.config = config
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = min(max_length or positions, positions)  # as the box clips it
        self.tokenizer = tokenizer
        if config.mode == "lora":
            model = add_lora(model, config)
        else:
            for name, p in model.named_parameters():
                p.requires_grad_(not _unused(name))
        self.model = model
        self.output_dim = int(model.config.hidden_size)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trained weights (LoRA tensors, or all): one group, ``weights``."""
        return {"weights": [p for p in self.parameters() if p.requires_grad]}

    def forward(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError("texts must be a list of strings")
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = self.model(**enc).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled  # (B, H)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """Outputs without gradients, in eval mode (no dropout)."""
        was_training = self.training
        self.eval()
        outs = [self(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        self.train(was_training)
        return torch.cat(outs) if outs else torch.zeros(0, self.output_dim)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the LoRA tensors, keyed as in ``self.model.state_dict()``."""
        return {k: v for k, v in self.model.state_dict().items() if LORA_MARK in k}


class LoraState:
    """For a module holding a ``WhiteBoxEncoder``: in ``lora`` mode ``state_dict()`` holds only
    the user's tensors (LoRA and the module's own), never the frozen base weights, and
    ``load_state_dict()`` expects exactly those. Mixed in before ``nn.Module``."""

    _base_prefix: str  # where the encoder's model tensors sit in state_dict(), e.g. "encoder.model."
    whitebox: WhiteBoxConfig

    def _frozen_key(self, key: str, prefix: str = "") -> bool:
        return self.whitebox.mode == "lora" and key.startswith(prefix + self._base_prefix) and LORA_MARK not in key

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in [k for k in state if self._frozen_key(k, prefix)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.whitebox.mode != "lora":
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not self._frozen_key(k)]
        frozen = [k for k in state_dict if self._frozen_key(k)]
        if strict and (missing or result.unexpected_keys or frozen):
            raise ArtifactError(
                f"LoRA state does not match the model: missing {missing}, "
                f"unexpected {list(result.unexpected_keys) + frozen}"
            )
        return result
