"""The ground floor: errors, atomic file writing, the TensorFlow import guard, progress hooks,
the class names and the preprocessing value that settings, bundle and input pipeline share.

Imports nothing else of mritumor; everything may import it."""
