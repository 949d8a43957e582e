"""The ``mritumor`` command line: one Typer app per sub-command group, assembled in main.py.

Nothing here imports TensorFlow, Keras or matplotlib at module level: ``--help``
and shell completion must stay fast. Command bodies import what they need.
"""
