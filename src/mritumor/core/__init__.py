"""The ground floor: errors, atomic file writing, the TensorFlow import guard, progress hooks.

Imports nothing else of mritumor; everything may import it."""
