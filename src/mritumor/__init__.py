"""mritumor: brain-tumour MRI classification with TensorFlow/Keras 3.

Importing the package is cheap: TensorFlow, Keras and matplotlib load only
inside the functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
