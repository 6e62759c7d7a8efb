"""Dataset readers, the multi-crop transform with positions, and the synthetic dataset generator."""
