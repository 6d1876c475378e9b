"""Gene token prompt (scPEFT "token adapter"): a residual bottleneck on the input embedding."""
