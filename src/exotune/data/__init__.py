"""Dataset loaders."""

from exotune.data.text import (
    DATA_ENV,
    KNOWN_DATASETS,
    TextLabelData,
    data_root,
    from_hf_dataset,
    load_dataset,
    load_text_file,
)

__all__ = [
    "DATA_ENV",
    "KNOWN_DATASETS",
    "TextLabelData",
    "data_root",
    "from_hf_dataset",
    "load_dataset",
    "load_text_file",
]
