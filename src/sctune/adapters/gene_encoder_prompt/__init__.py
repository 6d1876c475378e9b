"""Gene encoder prompt (scPEFT "encoder adapter"): bottlenecks after attention, beside the FFN."""
