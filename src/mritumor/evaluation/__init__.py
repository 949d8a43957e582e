"""Scoring a bundle: eval-set resolution, reports and figures, the calibrate and threshold steps.

May import: core, config, data, stats, plots, models, run, predict."""
