"""Everything that fits weights and writes a run: training, k-fold, finetune, the whole pipeline.

May import every package below the CLI."""
