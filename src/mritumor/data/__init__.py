"""Data: the standard layout, image reading, Kaggle fetch and prepare, synthetic phantoms,
integrity and leakage checks, split manifests and the tf.data input pipeline.

May import: core, config.
"""
