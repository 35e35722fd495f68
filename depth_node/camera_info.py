"""Camera intrinsics from ``sensor_msgs/CameraInfo`` fields: validation and rescaling.

ROS-free: the functions take and return the message's field values (sequences of floats), so
the node converts a CameraInfo with :func:`intrinsics_from_fields` and fills one from
:func:`intrinsics_to_fields`.

Binning and region of interest
------------------------------
A CameraInfo's ``width``, ``height``, ``K`` and ``P`` describe the full sensor; ``binning_x``,
``binning_y`` and ``roi`` say which part of it the image is, in full-resolution (unbinned)
pixels (image_proc's ``crop_decimate`` publishes such camera_info). As image_geometry's
``PinholeCameraModel`` does, :func:`intrinsics_from_fields` moves the principal point by the
ROI offset and then divides by the binning: ``fx' = fx / bx``, ``cx' = (cx - x_offset) / bx``
(and ``P``'s ``Tx`` by ``bx``), for an image of ``roi.width // bx`` x ``roi.height // by``
(the sensor's ``width // bx`` x ``height // by`` when the ROI is all zeros). Those are the
intrinsics of the image itself; ``depth/camera_info`` describes the published image, so it
carries them with binning 1 and no ROI.

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

from depth_node.text import shorten, shorten_values

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
        raise CameraInfoError(f'camera_info {name} has non-finite values: '
                              f'{shorten_values(a.tolist())}')
    return a


def _check_size(width: int, height: int) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError) as e:
        raise CameraInfoError(
            f'camera_info size must be integers, got {shorten(width)}x{shorten(height)}') from e
    if w != width or h != height or w <= 0 or h <= 0:
        raise CameraInfoError(f'camera_info size must be positive, got {width}x{height} '
                              '(is the camera calibrated?)')
    return w, h


def intrinsics_from_fields(width: int, height: int, k: Sequence[float], d: Sequence[float],
                           distortion_model: str, p: Sequence[float],
                           r: Sequence[float], binning_x: int = 0, binning_y: int = 0,
                           roi: Sequence[int] = (0, 0, 0, 0)) -> Intrinsics:
    """Validate CameraInfo fields and return :class:`Intrinsics` of the image they describe.

    Parameters
    ----------
    width, height : int
        ``CameraInfo.width``, ``CameraInfo.height``: the full sensor, pixels.
    k, d, p, r : sequence of float
        ``CameraInfo.k`` (9, row-major), ``.d`` (any length), ``.p`` (12), ``.r`` (9), of the
        full sensor.
    distortion_model : str
        ``CameraInfo.distortion_model``.
    binning_x, binning_y : int
        ``CameraInfo.binning_x``, ``.binning_y``; 0 and 1 both mean no binning.
    roi : sequence of 4 int
        ``(x_offset, y_offset, width, height)`` of ``CameraInfo.roi`` in full-resolution pixels;
        all zeros means the full sensor.

    P all zeros (uncalibrated drivers) becomes ``[K | 0]``; R all zeros becomes the identity.
    With binning or an ROI the result is for the image (see the module docstring): its size is
    ``roi.width // binning_x`` x ``roi.height // binning_y`` and K and P are shifted and divided
    to match.

    Raises
    ------
    CameraInfoError
        Non-positive size; wrong lengths; non-finite values; fx or fy not positive, cx or cy
        zero (an all-zero K means the camera is not calibrated); K's last row not
        ``[0, 0, 1]``; P with non-positive focal lengths; an unknown distortion model, or
        ``''`` / ``none`` with non-zero D; an ROI outside the sensor or empty, or a binning
        that leaves no pixel.
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
        raise CameraInfoError(
            f'distortion_model must be a string, got {shorten(distortion_model)}')
    if distortion_model in NO_DISTORTION_MODELS:
        if np.any(D != 0):
            raise CameraInfoError(f'distortion_model {distortion_model!r} needs D all zeros, got '
                                  f'{shorten_values(D.tolist())}; set the model (plumb_bob, ...)')
    elif distortion_model not in KNOWN_DISTORTION_MODELS:
        raise CameraInfoError(f'unknown distortion_model {shorten(distortion_model)}; expected '
                              f'one of {", ".join(KNOWN_DISTORTION_MODELS)} or an empty string')
    else:
        n = DISTORTION_COEFFICIENTS[distortion_model]
        if np.any(D[n:] != 0):
            raise CameraInfoError(f'{distortion_model} uses {n} distortion coefficients, got '
                                  f'{D.size} with non-zero extras '
                                  f'{shorten_values(D[n:].tolist())}')

    if not P.any():
        P = np.hstack([K, np.zeros((3, 1))])
    elif not (P[0, 0] > 0 and P[1, 1] > 0):
        raise CameraInfoError(f'camera_info p needs positive fx and fy, got {P[0, 0]}, {P[1, 1]}')
    if not R.any():
        R = np.eye(3)

    bx, by = _binning('binning_x', binning_x), _binning('binning_y', binning_y)
    x0, y0, rw, rh = _roi(roi, w, h)
    if (bx, by, x0, y0, rw, rh) != (1, 1, 0, 0, w, h):
        K, P = K.copy(), P.copy()
        for M in (K, P):  # as image_geometry: the ROI offset first, then the binning
            M[0, 2] -= x0
            M[1, 2] -= y0
            M[0] /= bx
            M[1] /= by
        w, h = rw // bx, rh // by
        if w <= 0 or h <= 0:
            raise CameraInfoError(f'camera_info binning {bx}x{by} of a {rw}x{rh} region leaves '
                                  f'no pixel')
    return Intrinsics(width=w, height=h, K=_frozen(K), D=_frozen(D),
                      distortion_model=distortion_model, P=_frozen(P), R=_frozen(R))


def _binning(name: str, value: int) -> int:
    try:
        b = int(value)
    except (TypeError, ValueError) as e:
        raise CameraInfoError(f'camera_info {name} must be an integer, got '
                              f'{shorten(value)}') from e
    if b != value or b < 0:
        raise CameraInfoError(f'camera_info {name} must be 0 or positive, got {shorten(value)}')
    return max(b, 1)


def _roi(roi: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """``(x_offset, y_offset, width, height)`` of the region, checked against the sensor."""
    try:
        x0, y0, rw, rh = (int(v) for v in roi)
    except (TypeError, ValueError) as e:
        raise CameraInfoError(f'camera_info roi must be 4 integers (x_offset, y_offset, '
                              f'width, height), got {shorten(roi)}') from e
    if (x0, y0, rw, rh) == (0, 0, 0, 0):
        return 0, 0, width, height
    if min(x0, y0) < 0 or rw <= 0 or rh <= 0 or x0 + rw > width or y0 + rh > height:
        raise CameraInfoError(
            f'camera_info roi (x_offset {x0}, y_offset {y0}, width {rw}, height {rh}) is empty '
            f'or not inside the {width}x{height} sensor')
    return x0, y0, rw, rh


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
