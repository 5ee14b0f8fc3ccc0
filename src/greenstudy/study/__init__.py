"""The `tune` entry point: an Optuna study of batch size against energy, its storage, front, plots and log.

May import: the top-level modules, measure, training, variants and runs. Never report or results."""
