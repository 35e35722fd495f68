"""The one exception type of the estimator package, and its one per-image argument check."""

from typing import Any, Optional, Sequence


class EstimatorError(RuntimeError):
    """The model could not be loaded or run; the message says what to change."""


def one_per_image(name: str, values: Optional[Sequence[Any]], count: int) -> Optional[list]:
    """``values`` (per-image ``clouds`` or ``prompts``) as a list of ``count`` entries, or None.

    Raises
    ------
    EstimatorError
        When there are not exactly ``count`` of them.
    """
    if values is None:
        return None
    values = list(values)
    if len(values) != count:
        raise EstimatorError(f'{name} must have one entry per image ({count}), got '
                             f'{len(values)}')
    return values
