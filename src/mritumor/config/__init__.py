"""Settings: the typed schema, recipes, and reading and writing config YAML.

May import: core."""
