"""The run folder, which is the model bundle: its layout and creation (``layout``), bundle.json
(``bundle``), splits, history, provenance, safe model loading (``checkpoint``) and the lock.

May import: core, config, data, stats, plots, models."""
