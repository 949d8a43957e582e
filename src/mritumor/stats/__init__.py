"""Pure NumPy/SciPy maths: metrics with intervals, temperature scaling, operating points.

No TensorFlow. May import: core, config, data."""
