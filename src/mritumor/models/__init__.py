"""The classifier: the backbone registry (built-ins and the ``mritumor.backbones`` entry points)
and the assembly of one flat functional Keras graph.

May import: core, config, data, stats, plots."""
