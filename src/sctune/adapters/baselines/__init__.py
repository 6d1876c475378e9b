"""Baselines as adapter plugins: full fine-tuning, head only, zero-shot kNN."""
