"""Exporting a bundle for other runtimes: ``mritumor export``.

Owns the serving graph that every format holds (uint8 images, or encoded image files for the
SavedModel, in; calibrated probabilities and the tumour score out, with the bundle's
preprocessing and temperature inside), the SavedModel, TensorFlow Lite and ONNX writers, the
JSON sidecar, the parity check of a written export against the ``Predictor``, and the atomic
placement of the result.

May import: core, config, data, stats, plots, models, run, predict."""
