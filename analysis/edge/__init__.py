"""Vision edge-training stages: small nets, datasets, TinyTL transfer, sparse back-propagation, federated learning, gradient leakage, compression."""
