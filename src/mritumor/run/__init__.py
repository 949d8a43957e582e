"""The run folder, which is the model bundle: bundle.json, its layout, splits, history and the lock.

May import: core, config, data, models."""
