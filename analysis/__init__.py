"""Looking inside the attention: norm-based analysis, word alignment, rank collapse and gradient
diagnostics, pictures."""
