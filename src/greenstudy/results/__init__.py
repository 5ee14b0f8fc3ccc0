"""The published results/ folder, regenerated from MLflow runs and Optuna studies.

May import: every room but the entry modules (demo, __main__)."""
