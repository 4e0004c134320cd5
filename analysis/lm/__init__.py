"""Language models: loading, tokenising and packing, the training loop, perplexity."""
