"""Using a bundle: the Predictor (calibrated probabilities, tumour score), ensembles and triage,
the image inputs gathered from files, folders and DICOM, Grad-CAM and its overlays.

May import: core, config, data, stats, plots, models, run."""
