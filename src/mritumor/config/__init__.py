"""Settings: the typed schema, resolving it from its sources, recipes, and config YAML.

May import: core."""
