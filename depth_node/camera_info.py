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
:class:`Intrinsics` is the one camera model of the package: the cloud
(:func:`depth_node.cloud.depth_to_points`), the LiDAR projection (:mod:`depth_node.lidar`) and
``depth/camera_info`` all use it, so they agree to the last digit. When an image is resized to
``width`` x ``height`` (:meth:`Intrinsics.scaled`; ``sx = width / intr.width``,
``sy = height / intr.height``), pixel centres map to pixel centres: ``u' = (u + 0.5) * sx - 0.5``,
so ``fx' = fx * sx`` and ``cx' = (cx + 0.5) * sx - 0.5`` (K and P alike). That is how the
package's own resizes move the image content: :func:`depth_node.image_codec.limit_pixels` (the
box filter of ``input.oversize: downscale``), the estimator's upsampling of the prediction
(``F.interpolate``, ``align_corners=False``), and ``cv2.resize`` in a driver. image_proc's
``resize`` node instead multiplies K by the scale (``cx' = cx * sx``), which is
``0.5 * (sx - 1)`` pixels off for the image it publishes (0.25 px when halving, 0.5 px when
doubling); our ``depth/camera_info`` differs from image_proc's by that much and matches the
depth image.
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
import math
from typing import Optional, Sequence

import numpy as np

from depth_node.text import shorten, shorten_values

DISTORTION_COEFFICIENTS = {'plumb_bob': 5, 'rational_polynomial': 8, 'equidistant': 4}
"""ROS distortion models (sensor_msgs/distortion_models.hpp) and how many D values each uses."""

KNOWN_DISTORTION_MODELS = tuple(DISTORTION_COEFFICIENTS)

NO_DISTORTION_MODELS = ('', 'none')
"""Accepted names for an image without distortion; D must then be all zeros (or empty)."""


class CameraInfoError(ValueError):
    """CameraInfo fields that cannot describe a pinhole camera, or do not fit the image."""


_MAX_THETA = math.radians(89.5)  # largest field angle searched for the valid distortion range
_RADIUS_MARGIN = 1.15             # points may lie this far beyond the image's radius (tangential)


@dataclass(frozen=True, eq=False)
class Intrinsics:
    """The camera model of one image: pinhole intrinsics, lens distortion and size, validated.

    The one camera model of the package (see the module docstring for the rescaling
    convention). Built from CameraInfo fields by :func:`intrinsics_from_fields`, or directly:
    ``Intrinsics(K, D, distortion_model, width, height)``.

    Attributes
    ----------
    K : np.ndarray
        ``(3, 3)`` float64 camera matrix, pixels (``fx, skew, cx; 0, fy, cy; 0, 0, 1``).
    D : np.ndarray
        ``(n,)`` float64 distortion coefficients for ``distortion_model``, in ROS / OpenCV order
        (``plumb_bob`` k1 k2 p1 p2 k3, ``rational_polynomial`` k1 k2 p1 p2 k3 k4 k5 k6,
        ``equidistant`` k1 k2 k3 k4, OpenCV fisheye); fewer are zero-padded (empty: none), more
        are accepted when the extra ones are zero. Kept as given (depth/camera_info repeats it).
    distortion_model : str
        ``plumb_bob``, ``rational_polynomial``, ``equidistant``, or ``''`` / ``none`` (D zero).
    width, height : int
        Image size in pixels that K and P refer to.
    P : np.ndarray
        ``(3, 4)`` float64 projection matrix (of the rectified image), pixels; ``[K | 0]`` when
        not given or all zeros.
    R : np.ndarray
        ``(3, 3)`` float64 rectification rotation; the identity when not given or all zeros.

    The arrays are read-only private copies.

    Raises
    ------
    CameraInfoError
        From the constructor: see :func:`camera_matrix` for K; a size that is not positive; a
        distortion model it does not know, D that does not fit it, a non-finite D, P or R.
    """

    K: np.ndarray
    D: np.ndarray
    distortion_model: str
    width: int
    height: int
    P: Optional[np.ndarray] = None
    R: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        w, h = _check_size(self.width, self.height)
        K = camera_matrix(self.K)
        D = _as_float_array('d', [] if self.D is None else self.D, None)
        _check_lens(self.distortion_model, D)
        P = np.hstack([K, np.zeros((3, 1))]) if self.P is None else \
            _as_float_array('p', self.P, 12).reshape(3, 4)
        if not P.any():
            P = np.hstack([K, np.zeros((3, 1))])
        elif not (P[0, 0] > 0 and P[1, 1] > 0):
            raise CameraInfoError(f'camera_info p needs positive fx and fy, got {P[0, 0]}, '
                                  f'{P[1, 1]}')
        R = np.eye(3) if self.R is None else _as_float_array('r', self.R, 9).reshape(3, 3)
        if not R.any():
            R = np.eye(3)
        for name, value in (('width', w), ('height', h), ('K', K), ('D', _frozen(D)),
                            ('P', _frozen(P)), ('R', _frozen(R))):
            object.__setattr__(self, name, value)

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

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera for the image resized to ``width`` x ``height`` pixels.

        Pixel centres map to pixel centres (the module docstring says why):
        ``u' = (u + 0.5) * sx - 0.5`` with ``sx = width / self.width`` (and ``v`` with ``sy``),
        applied to K and P (``fx' = fx * sx``, ``cx' = (cx + 0.5) * sx - 0.5``). D and R do
        not depend on the resolution. ``self`` when the size is the same.
        """
        w, h = _check_size(width, height)
        if (w, h) == (self.width, self.height):
            return self
        sx, sy = w / self.width, h / self.height
        A = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        return Intrinsics(A @ self.K, self.D, self.distortion_model, w, h, A @ self.P, self.R)

    # -------------------------------------------------------------- lens distortion
    @property
    def distorted(self) -> bool:
        """True unless projection is plain pinhole (equidistant always is: r_d = atan(r))."""
        return self.distortion_model == 'equidistant' or bool(np.any(self.D != 0))

    @functools.cached_property
    def coefficients(self) -> np.ndarray:
        """D padded (or cut) to the model's number of coefficients: 5, 8, 4, or 0 for none."""
        n = DISTORTION_COEFFICIENTS.get(self.distortion_model, 0)
        out = np.zeros(n)
        m = min(n, self.D.size)
        out[:m] = self.D[:m]
        out.flags.writeable = False
        return out

    def radial_map(self, r: np.ndarray) -> np.ndarray:
        """Distorted normalised radius of undistorted normalised radius ``r`` (radial terms)."""
        r = np.asarray(r, dtype=np.float64)
        D = self.coefficients
        if self.distortion_model == 'equidistant':
            theta = np.arctan(r)
            t2 = theta * theta
            return theta * (1 + t2 * (D[0] + t2 * (D[1] + t2 * (D[2] + t2 * D[3]))))
        if D.size == 0:
            return r
        r2 = r * r
        num = 1 + r2 * (D[0] + r2 * (D[1] + r2 * D[4]))
        if self.distortion_model == 'rational_polynomial':
            num = num / (1 + r2 * (D[5] + r2 * (D[6] + r2 * D[7])))
        return r * num

    @functools.cached_property
    def max_radius(self) -> float:
        """The largest undistorted normalised radius ``hypot(x/z, y/z)`` a projection trusts.

        The undistorted radius of the farthest image corner times a small margin, capped where
        the distortion polynomial stops being monotonic, so points far outside the field of
        view cannot fold back into the image.
        """
        corners = np.array([[0, 0], [self.width - 1, 0], [0, self.height - 1],
                            [self.width - 1, self.height - 1]], dtype=np.float64)
        fx, s, cx = self.K[0]
        fy, cy = self.K[1, 1], self.K[1, 2]
        yn = (corners[:, 1] - cy) / fy
        xn = (corners[:, 0] - cx - s * yn) / fx
        rd_image = float(np.max(np.hypot(xn, yn)))
        if not self.distorted:
            return rd_image * _RADIUS_MARGIN
        r = np.tan(np.linspace(0.0, _MAX_THETA, 4001))
        rd = self.radial_map(r)
        if self.distortion_model == 'rational_polynomial':
            D = self.coefficients
            r2 = r * r
            denom = 1 + r2 * (D[5] + r2 * (D[6] + r2 * D[7]))
            rd = np.where(denom > 0, rd, np.nan)
        bad = ~(np.diff(rd) > 0)  # folds back, or NaN
        n_valid = int(np.argmax(bad)) + 1 if bad.any() else r.size
        r_fold = float(r[n_valid - 1])
        covering = np.nonzero(rd[:n_valid] >= rd_image)[0]
        if covering.size == 0:  # the image reaches past the model's valid range
            return r_fold
        return min(r_fold, float(r[covering[0]]) * _RADIUS_MARGIN)


def camera_matrix(K: Sequence[float]) -> np.ndarray:
    """``K`` checked as a pinhole camera matrix: a read-only ``(3, 3)`` float64 copy.

    The one check of a camera matrix, for :class:`Intrinsics` and for the cloud's ``K``.

    Raises
    ------
    CameraInfoError
        Not 9 numbers (a 3x3 matrix), a non-finite value, fx or fy not positive, or a last row
        other than ``[0, 0, 1]``.
    """
    try:
        a = np.array(K, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise CameraInfoError(f'K must be a 3x3 camera matrix of numbers: {e}') from e
    if a.size != 9:
        raise CameraInfoError(f'K must be a 3x3 camera matrix (9 values), got shape {a.shape}')
    a = a.reshape(3, 3)
    if not np.isfinite(a).all():
        raise CameraInfoError(f'K has non-finite values: {shorten_values(a.ravel().tolist())}')
    fx, fy = a[0, 0], a[1, 1]
    if not (fx > 0 and fy > 0):
        raise CameraInfoError(f'K needs positive fx and fy, got fx={fx}, fy={fy} (an all-zero '
                              'K means the camera is not calibrated)')
    if not np.array_equal(a[2], [0.0, 0.0, 1.0]):
        raise CameraInfoError(f'K must end with the row [0, 0, 1], got {a[2].tolist()}')
    a.flags.writeable = False
    return a


def _check_lens(distortion_model: str, D: np.ndarray) -> None:
    """The distortion model is known and D fits it (see :class:`Intrinsics`)."""
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
    K = camera_matrix(_as_float_array('k', k, 9))
    D = _as_float_array('d', d, None)
    P = _as_float_array('p', p, 12).reshape(3, 4)
    R = _as_float_array('r', r, 9).reshape(3, 3)
    if K[0, 2] == 0 or K[1, 2] == 0:  # a CameraInfo of an uncalibrated camera, in part
        raise CameraInfoError(f'camera_info k has a zero principal point (cx={K[0, 2]}, '
                              f'cy={K[1, 2]}); calibrate the camera or set cx, cy')
    _check_lens(distortion_model, D)
    if not P.any():
        P = np.hstack([K, np.zeros((3, 1))])

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
    return Intrinsics(K, D, distortion_model, w, h, P, R)


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


def fit_to_image(intr: Intrinsics, width: int, height: int, rel_tol: float = 0.01) -> Intrinsics:
    """Intrinsics for an image of ``width`` x ``height``, rescaled when CameraInfo differs.

    The image must be a resize of the calibrated one: the aspect ratios must agree within
    ``rel_tol`` (relative), otherwise the image was cropped or padded and K cannot be derived.
    The result is :meth:`Intrinsics.scaled` (pixel centres to pixel centres).
    """
    w, h = _check_size(width, height)
    if (w, h) == (intr.width, intr.height):
        return intr
    sx, sy = w / intr.width, h / intr.height
    if not math.isclose(sx, sy, rel_tol=rel_tol):
        raise CameraInfoError(f'camera_info is {intr.width}x{intr.height} but image is {w}x{h} '
                              'with a different aspect ratio; publish a camera_info for the '
                              'image size (cropped or padded images cannot be rescaled)')
    return intr.scaled(w, h)


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
