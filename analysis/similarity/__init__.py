"""Domain similarity: SBERT embeddings of sampled texts, and MMD / Fréchet distances between them."""
