"""LoRA on the attention (and optionally FFN) projections, packed projections included."""
