"""White-box baselines: the user owns the weights (LoRA through PEFT, full fine-tuning).

Baselines only: they show how close the gray- and black-box methods come without that access.
"""

from exotune.whitebox.config import DEFAULT_TARGETS, MODES, WhiteBoxConfig
from exotune.whitebox.encoder import WhiteBoxEncoder, lora_target_names
from exotune.whitebox.model import WhiteBoxClassifier
from exotune.whitebox.pair import WhiteBoxPairRetriever, WhiteBoxSketchRetriever, WhiteBoxVideoRetriever
from exotune.whitebox.retriever import WhiteBoxRetriever

__all__ = [
    "DEFAULT_TARGETS",
    "MODES",
    "WhiteBoxClassifier",
    "WhiteBoxConfig",
    "WhiteBoxEncoder",
    "WhiteBoxPairRetriever",
    "WhiteBoxRetriever",
    "WhiteBoxSketchRetriever",
    "WhiteBoxVideoRetriever",
    "lora_target_names",
]
