"""Dataset loaders."""

from exotune.data.beir import (
    KNOWN_RETRIEVAL_DATASETS,
    Corpus,
    RetrievalData,
    load_beir,
    load_retrieval_dataset,
)
from exotune.data.images import (
    ImageCaptionData,
    ImageLabelData,
    load_image_captions,
    load_image_folder,
)
from exotune.data.text import (
    DATA_ENV,
    KNOWN_DATASETS,
    TextLabelData,
    data_root,
    from_hf_dataset,
    load_dataset,
    load_text_file,
    load_text_files,
)

__all__ = [
    "DATA_ENV",
    "KNOWN_DATASETS",
    "KNOWN_RETRIEVAL_DATASETS",
    "Corpus",
    "ImageCaptionData",
    "ImageLabelData",
    "RetrievalData",
    "TextLabelData",
    "data_root",
    "from_hf_dataset",
    "load_beir",
    "load_dataset",
    "load_image_captions",
    "load_image_folder",
    "load_retrieval_dataset",
    "load_text_file",
    "load_text_files",
]
