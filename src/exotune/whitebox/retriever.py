"""The white-box retrieval baseline: queries through an owned encoder (LoRA or fully fine-tuned),
documents through the frozen box, bare (``doc_side="frozen"``) or followed by a trained output
adapter (``"output-only"``: the same document side as the gray-box retrievers').

Re-encoding a corpus through a trained backbone at every validation costs minutes per epoch on
a CPU; with the document side frozen, the corpus is embedded once (and its box outputs can be
kept on disk, as the gray-box rows' are), and only queries cross the trained weights. Since the
owned encoder starts from the box's weights with the box's tokenisation, pooling and
normalisation (and LoRA's B starts at zero), the untrained retriever ranks as zero-shot does.
"""

from __future__ import annotations

from torch import nn

from exotune.boxes.base import Box, model_digest
from exotune.errors import ConfigError, SpecMismatchError
from exotune.graybox.config import DGAConfig
from exotune.graybox.model import GrayBoxModel
from exotune.tasks.retrieval import RetrievalConfig, TwoTowerRetriever
from exotune.whitebox.config import WhiteBoxConfig
from exotune.whitebox.encoder import LoraState, WhiteBoxEncoder


class WhiteBoxRetriever(LoraState, TwoTowerRetriever):
    """Owned query encoder + the box as document tower, bare (``doc_side="frozen"``) or with an
    output adapter (``"output-only"``, the gray-box retrievers' default document side). In ``lora``
    mode ``state_dict()`` holds only the LoRA tensors and the temperature. A benchmark baseline:
    it trains and evaluates through ``Trainer``, but saves no artifact."""

    _base_prefix = "query_tower.model."

    def __init__(
        self,
        box: Box,
        model: nn.Module,
        tokenizer,
        whitebox: WhiteBoxConfig | None = None,
        config: RetrievalConfig | None = None,
    ) -> None:
        config = config or RetrievalConfig(doc_side="frozen")
        if config.doc_side not in ("frozen", "output-only"):
            raise ConfigError(
                "the white-box retriever's documents are the frozen box's outputs: doc_side must be "
                f"'frozen' or 'output-only', got {config.doc_side!r}"
            )
        spec = box.spec
        digest = model_digest(model)
        if digest != spec.model_digest:
            raise SpecMismatchError(
                f"the owned encoder's weights ({digest}) are not the box's ({spec.model_digest}): "
                "queries and documents would come from different backbones"
            )
        super().__init__(config)
        self.whitebox = whitebox or WhiteBoxConfig()
        self.query_tower = WhiteBoxEncoder(
            model,
            tokenizer,
            self.whitebox,
            pooling=spec.pooling,
            normalize=spec.normalized,
            max_length=spec.text_max_length,
        )
        # the box's outputs are cached either way; only the output adapter (if any) trains
        self.doc_tower = GrayBoxModel(box, DGAConfig.variant("none" if config.doc_side == "frozen" else "output-only"))

    @classmethod
    def from_backbone(
        cls,
        box: Box,
        name_or_path: str | None,
        whitebox: WhiteBoxConfig | None = None,
        config: RetrievalConfig | None = None,
    ) -> WhiteBoxRetriever:
        """The owned encoder loaded from the backbone ``box`` was loaded from."""
        from exotune.boxes.loading import load_text_encoder

        model, tokenizer, _ = load_text_encoder(name_or_path)
        return cls(box, model, tokenizer, whitebox, config)

    @property
    def box(self) -> Box:
        return self.doc_tower.box

    @property
    def doc_encoder(self) -> GrayBoxModel:
        return self.doc_tower

    def artifact_files(self) -> dict:
        raise ConfigError(
            "the white-box retriever is a benchmark baseline: it saves no adapter folder "
            "(train with Trainer(output_dir=None))"
        )
