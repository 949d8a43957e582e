"""Data: layouts, Kaggle fetch, synthetic phantoms, integrity checks and the input pipeline."""
