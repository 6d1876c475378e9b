"""Geneformer backbone: transformers' BERT over rank-value encoded Ensembl gene tokens."""
