"""Built-in backbones. Each module registers its builders on import, without importing Keras."""
