"""One `main` run: its parameters, the parent and child MLflow runs, resume across sittings.

May import: the top-level modules, measure, training and variants. Never study, report or results."""
