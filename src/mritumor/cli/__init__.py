"""The ``mritumor`` command line: one Typer app per sub-command group, assembled in main.py.

A command module imports no other; what several commands share lives in state, ui,
options, completion and runs. Nothing here imports TensorFlow, Keras, matplotlib,
scikit-learn or pydantic-settings at module level: ``--help`` and shell completion
must stay fast. Command bodies import the library when they run.

May import: every layer below.
"""
