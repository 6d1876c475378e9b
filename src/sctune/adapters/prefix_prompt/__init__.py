"""Prefix prompt (scPEFT, VPT-deep style): learned tokens inserted before selected blocks."""
