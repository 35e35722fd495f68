"""The one exception type of the estimator package."""


class EstimatorError(RuntimeError):
    """The model could not be loaded or run; the message says what to change."""
