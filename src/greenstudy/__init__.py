"""greenstudy: what image classifiers cost the planet, measured with CodeCarbon and tracked in MLflow."""

__version__ = "0.1.0"
