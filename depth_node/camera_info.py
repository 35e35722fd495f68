"""Camera intrinsics from ``sensor_msgs/CameraInfo`` fields: validation and rescaling.

ROS-free: the functions take and return the message's field values (sequences of floats), so
the node converts a CameraInfo with :func:`intrinsics_from_fields` and fills one from
:func:`intrinsics_to_fields`.

Rescaling convention
--------------------
A depth network often runs at another resolution than the camera, and some drivers publish
CameraInfo for the full sensor while streaming a binned image. :func:`scale_intrinsics` scales
K and P the way image_proc's ``resize`` node does (``image_proc/src/resize.cpp``): rows 0 and 1
are multiplied by ``sx = width / intr.width`` and ``sy = height / intr.height``, so
``fx' = fx * sx`` and ``cx' = cx * sx``. That keeps our ``depth/camera_info`` identical to what
image_proc publishes for the same resize. Strictly, for a resize that maps pixel centres
(``cv2.resize``, ``torch`` ``align_corners=False``) the principal point moves to
``(cx + 0.5) * sx - 0.5``; the two differ by ``0.5 * (sx - 1)`` pixels (0.25 px when halving,
0.5 px when doubling), which we accept for consistency with the ROS tools.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import math
from typing import Sequence

import numpy as np

DISTORTION_COEFFICIENTS = {'plumb_bob': 5, 'rational_polynomial': 8, 'equidistant': 4}
"""ROS distortion models (sensor_msgs/distortion_models.hpp) and how many D values each uses."""

KNOWN_DISTORTION_MODELS = tuple(DISTORTION_COEFFICIENTS)

NO_DISTORTION_MODELS = ('', 'none')
"""Accepted names for an image without distortion; D must then be all zeros (or empty)."""


class CameraInfoError(ValueError):
    """CameraInfo fields that cannot describe a pinhole camera, or do not fit the image."""


@dataclass(frozen=True, eq=False)
class Intrinsics:
    """Validated pinhole intrinsics of one image size.

    Attributes
    ----------
    width, height : int
        Image size in pixels that K and P refer to.
    K : np.ndarray
        ``(3, 3)`` float64 camera matrix, pixels.
    D : np.ndarray
        ``(n,)`` float64 distortion coefficients for ``distortion_model`` (ROS order).
    distortion_model : str
        As received: ``plumb_bob``, ``rational_polynomial``, ``equidistant``, ``''`` or ``none``.
    P : np.ndarray
        ``(3, 4)`` float64 projection matrix (of the rectified image), pixels.
    R : np.ndarray
        ``(3, 3)`` float64 rectification rotation.

    The arrays are read-only.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    distortion_model: str
    P: np.ndarray
    R: np.ndarray

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)  # always a private copy
    a.flags.writeable = False
    return a


def _as_float_array(name: str, values: Sequence[float], length: int | None) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise CameraInfoError(f'camera_info {name} must be a sequence of numbers: {e}') from e
    if length is not None and a.size != length:
        raise CameraInfoError(f'camera_info {name} must have {length} values, got {a.size}')
    if not np.isfinite(a).all():
        raise CameraInfoError(f'camera_info {name} has non-finite values: {a.tolist()}')
    return a


def _check_size(width: int, height: int) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError) as e:
        raise CameraInfoError(
            f'camera_info size must be integers, got {width!r}x{height!r}') from e
    if w != width or h != height or w <= 0 or h <= 0:
        raise CameraInfoError(f'camera_info size must be positive, got {width}x{height} '
                              '(is the camera calibrated?)')
    return w, h


def intrinsics_from_fields(width: int, height: int, k: Sequence[float], d: Sequence[float],
                           distortion_model: str, p: Sequence[float],
                           r: Sequence[float]) -> Intrinsics:
    """Validate CameraInfo fields and return :class:`Intrinsics`.

    Parameters
    ----------
    width, height : int
        ``CameraInfo.width``, ``CameraInfo.height``, pixels.
    k, d, p, r : sequence of float
        ``CameraInfo.k`` (9, row-major), ``.d`` (any length), ``.p`` (12), ``.r`` (9).
    distortion_model : str
        ``CameraInfo.distortion_model``.

    P all zeros (uncalibrated drivers) becomes ``[K | 0]``; R all zeros becomes the identity.

    Raises
    ------
    CameraInfoError
        Non-positive size; wrong lengths; non-finite values; fx or fy not positive, cx or cy
        zero (an all-zero K means the camera is not calibrated); K's last row not
        ``[0, 0, 1]``; P with non-positive focal lengths; an unknown distortion model, or
        ``''`` / ``none`` with non-zero D.
    """
    w, h = _check_size(width, height)
    K = _as_float_array('k', k, 9).reshape(3, 3)
    D = _as_float_array('d', d, None)
    P = _as_float_array('p', p, 12).reshape(3, 4)
    R = _as_float_array('r', r, 9).reshape(3, 3)

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (fx > 0 and fy > 0):
        raise CameraInfoError(f'camera_info k needs positive fx and fy, got fx={fx}, fy={fy} '
                              '(an all-zero K means the camera is not calibrated)')
    if cx == 0 or cy == 0:
        raise CameraInfoError(f'camera_info k has a zero principal point (cx={cx}, cy={cy}); '
                              'calibrate the camera or set cx, cy')
    if not np.array_equal(K[2], [0.0, 0.0, 1.0]):
        raise CameraInfoError(
            f'camera_info k must end with the row [0, 0, 1], got {K[2].tolist()}')

    if not isinstance(distortion_model, str):
        raise CameraInfoError(f'distortion_model must be a string, got {distortion_model!r}')
    if distortion_model in NO_DISTORTION_MODELS:
        if np.any(D != 0):
            raise CameraInfoError(f'distortion_model {distortion_model!r} needs D all zeros, got '
                                  f'{D.tolist()}; set the model (plumb_bob, ...)')
    elif distortion_model not in KNOWN_DISTORTION_MODELS:
        raise CameraInfoError(f'unknown distortion_model {distortion_model!r}; expected one of '
                              f'{", ".join(KNOWN_DISTORTION_MODELS)} or an empty string')
    else:
        n = DISTORTION_COEFFICIENTS[distortion_model]
        if np.any(D[n:] != 0):
            raise CameraInfoError(f'{distortion_model} uses {n} distortion coefficients, got '
                                  f'{D.size} with non-zero extras {D[n:].tolist()}')

    if not P.any():
        P = np.hstack([K, np.zeros((3, 1))])
    elif not (P[0, 0] > 0 and P[1, 1] > 0):
        raise CameraInfoError(f'camera_info p needs positive fx and fy, got {P[0, 0]}, {P[1, 1]}')
    if not R.any():
        R = np.eye(3)

    return Intrinsics(width=w, height=h, K=_frozen(K), D=_frozen(D),
                      distortion_model=distortion_model, P=_frozen(P), R=_frozen(R))


def scale_intrinsics(intr: Intrinsics, width: int, height: int) -> Intrinsics:
    """Intrinsics of the same camera resized to ``width`` x ``height`` pixels.

    Rows 0 and 1 of K and P are multiplied by ``width / intr.width`` and
    ``height / intr.height`` (image_proc ``resize`` convention, see the module docstring); D and
    R do not depend on the resolution.
    """
    w, h = _check_size(width, height)
    if (w, h) == (intr.width, intr.height):
        return intr
    S = np.diag([w / intr.width, h / intr.height, 1.0])
    return replace(intr, width=w, height=h, K=_frozen(S @ intr.K), P=_frozen(S @ intr.P))


def fit_to_image(intr: Intrinsics, width: int, height: int, rel_tol: float = 0.01) -> Intrinsics:
    """Intrinsics for an image of ``width`` x ``height``, rescaled when CameraInfo differs.

    The image must be a resize of the calibrated one: the aspect ratios must agree within
    ``rel_tol`` (relative), otherwise the image was cropped or padded and K cannot be derived.
    """
    w, h = _check_size(width, height)
    if (w, h) == (intr.width, intr.height):
        return intr
    sx, sy = w / intr.width, h / intr.height
    if not math.isclose(sx, sy, rel_tol=rel_tol):
        raise CameraInfoError(f'camera_info is {intr.width}x{intr.height} but image is {w}x{h} '
                              'with a different aspect ratio; publish a camera_info for the '
                              'image size (cropped or padded images cannot be rescaled)')
    return scale_intrinsics(intr, w, h)


def intrinsics_to_fields(intr: Intrinsics) -> dict:
    """CameraInfo field values for ``intr``.

    Returns
    -------
    dict
        ``width``, ``height`` (int), ``k`` (9), ``d``, ``p`` (12), ``r`` (9) as lists of float,
        and ``distortion_model`` (str), ready for ``setattr`` on a CameraInfo.
    """
    return {
        'width': int(intr.width),
        'height': int(intr.height),
        'distortion_model': intr.distortion_model,
        'd': [float(v) for v in intr.D],
        'k': [float(v) for v in intr.K.reshape(-1)],
        'r': [float(v) for v in intr.R.reshape(-1)],
        'p': [float(v) for v in intr.P.reshape(-1)],
    }
