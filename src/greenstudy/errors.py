"""Errors a user can fix: the entry scripts print them as one line and exit non-zero."""


class GreenstudyError(Exception):
    """Bad input or environment, reported as one clear line."""


class ConfigError(GreenstudyError):
    """A parameter has a wrong type or value."""


class DataError(GreenstudyError):
    """The dataset is missing, corrupt or cannot be downloaded."""


class TrackingError(GreenstudyError):
    """The MLflow tracking store cannot be reached."""


class TrainingDiverged(GreenstudyError):
    """The training loss became NaN or infinite."""


class VariantSkipped(Exception):
    """A variant that cannot run natively here (e.g. amp on a CPU without bf16/fp16): not a failure.
    Its run ends KILLED with the reason in the `skipped` tag."""
