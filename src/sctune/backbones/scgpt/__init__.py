"""scGPT backbone: encoder, checkpoint loader and tokeniser (see docs/backbones/scgpt.md)."""
