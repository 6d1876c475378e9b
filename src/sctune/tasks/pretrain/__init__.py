"""Self-supervised (continued) pretraining with each backbone's own masked objective."""
