"""scBERT backbone (Performer over a fixed gene order), reimplemented from the paper.

See ``docs/backbones/scbert.md``. scBERT's own code is GPL-3.0 and is not used or copied here.
"""
