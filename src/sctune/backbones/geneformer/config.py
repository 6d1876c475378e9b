"""Recipe options of the Geneformer backbone."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sctune.backbones.geneformer.checkpoints import SHIPPED
from sctune.backbones.geneformer.dictionaries import check_builtin, is_builtin
from sctune.core.config import PathField
from sctune.core.shipped import Shipped, ShippedCheckpointConfig

_INLINE = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
)


class GeneformerConfig(ShippedCheckpointConfig):
    """Options of ``backbone: {name: geneformer, ...}``.

    Weights come from ``checkpoint`` (a Hugging Face model folder). Without one the model is
    randomly initialised with the shape of ``model_config`` (a ``config.json``) or of the inline
    sizes (V1-10M sizes where unset).
    """

    shipped: ClassVar[Shipped] = SHIPPED

    # 'model_config' is pydantic's own attribute name, so the field is 'model_config_path' with the
    # recipe key 'model_config' as alias (accepted under both names, dumped as 'model_config').
    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    checkpoint: str | None = PathField(
        None,
        description="model folder with config.json and model.safetensors or pytorch_model.bin "
        "(a Geneformer BertForMaskedLM); 'builtin:pbmc_small' = sctune's own small checkpoint "
        "(fills in its dictionaries where unset); omit for a randomly initialised model",
    )
    model_config_path: str | None = PathField(
        None,
        alias="model_config",
        description="config.json giving the shape of a randomly initialised model "
        "(e.g. v1_6L_10M_config.json); not used with 'checkpoint'",
    )
    hidden_size: int | None = Field(None, gt=0, description="random init: hidden size (256)")
    num_layers: int | None = Field(None, gt=0, description="random init: encoder layers (6)")
    num_heads: int | None = Field(None, gt=0, description="random init: attention heads (4)")
    intermediate_size: int | None = Field(None, gt=0, description="random init: FFN size (512)")
    max_position_embeddings: int | None = Field(
        None, gt=0, description="random init: position embeddings (2048)"
    )
    token_dictionary: str | None = PathField(
        None,
        description="token dictionary (.json or .pkl, may be gzipped): Ensembl id -> token id, "
        "with '<pad>' (and '<cls>'/'<eos>' in V2); 'builtin:v1' = Geneformer V1's, shipped with "
        "sctune; derived from the data's genes for random init when omitted",
    )
    gene_median_dictionary: str | None = PathField(
        None,
        description="gene median dictionary (.json or .pkl): Ensembl id -> non-zero median of "
        "normalised expression in the pretraining corpus; 'builtin:v1' = Geneformer V1's",
    )
    gene_name_id_dict: str | None = PathField(
        None,
        description="gene symbol -> Ensembl id map (.json or .pkl), used when the data's genes "
        "are symbols; 'builtin:v1' = Geneformer V1's",
    )
    ensembl_mapping_dict: str | None = PathField(
        None,
        description="optional Ensembl id -> collapsed Ensembl id map (Geneformer V2 "
        "ensembl_mapping_dict); ids it does not list are kept as they are",
    )
    version: Literal["auto", "v1", "v2"] = Field(
        "auto",
        description="input format: v1 = top genes only; v2 = '<cls>' + genes + '<eos>'; auto = "
        "v2 when the token dictionary has '<cls>' and '<eos>'",
    )
    max_input_size: int | None = Field(
        None,
        gt=2,
        description="tokens per cell including specials; default the model's position count "
        "(2048 in V1, 4096 in V2)",
    )
    pooling: Literal["mean", "cls", "pooler"] = Field(
        "mean",
        description="cell embedding: mean = mean over gene tokens (Geneformer's extractor; "
        "meaningful without training, so zero-shot works); cls = position 0 (V2 '<cls>', V1 the "
        "top-ranked gene); pooler = tanh(dense(position 0)), newly initialised and trained with "
        "the head, as scPEFT's BertForSequenceClassification",
    )
    attention_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="attention-probability dropout; 0 keeps the fused attention kernel "
        "(pretraining used 0.02 in V1 and 0.1 in V2)",
    )
    hidden_dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="hidden dropout; default the checkpoint's value"
    )
    min_gene_match: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="refuse data where fewer than this fraction of genes map to the vocabulary",
    )
    allow_lognorm: bool = Field(
        False,
        description="accept log1p-normalised input by undoing the log (expm1) and ranking those "
        "values; an approximation of Geneformer's counts input",
    )

    @field_validator(
        "token_dictionary", "gene_median_dictionary", "gene_name_id_dict", "ensembl_mapping_dict"
    )
    @classmethod
    def _known_builtin(cls, v: str | None, info: ValidationInfo) -> str | None:
        if is_builtin(v):
            check_builtin(info.field_name, v)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> GeneformerConfig:
        inline = [k for k in _INLINE if getattr(self, k) is not None]
        if self.checkpoint and inline:
            inline = _differing_from_checkpoint(self, inline)
        if self.checkpoint and (self.model_config_path or inline):
            given = ["model_config"] if self.model_config_path else []
            raise ValueError(
                "'checkpoint' fixes the model shape; remove "
                + ", ".join(f"'{k}'" for k in given + inline)
            )
        if self.model_config_path and inline:
            raise ValueError(
                "give the shape once: 'model_config' or the inline sizes "
                + ", ".join(f"'{k}'" for k in inline)
            )
        return self

    @property
    def random_init(self) -> bool:
        """True when no pretrained checkpoint is given."""
        return self.checkpoint is None


_CONFIG_KEYS = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
}


def _differing_from_checkpoint(config: GeneformerConfig, inline: list[str]) -> list[str]:
    """The inline sizes that differ from the checkpoint's config.json (all of them when it cannot
    be read): a recipe may repeat the checkpoint's sizes, so one recipe serves the checkpoint and
    the same model randomly initialised (``backbone.checkpoint=null``)."""
    import json

    try:
        shape = json.loads((Path(str(config.checkpoint)).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return inline
    return [k for k in inline if shape.get(_CONFIG_KEYS[k]) != getattr(config, k)]
