"""Using a bundle: the Predictor (calibrated probabilities, tumour score, triage), ensembles,
Grad-CAM and its overlays.

May import: core, config, data, stats, models, run."""
