"""Data: class names, layouts, image reading, Kaggle fetch, synthetic phantoms, integrity checks,
split manifests and the tf.data input pipeline.

May import: core, config.
"""
