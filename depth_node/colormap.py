"""Colour depth or disparity images for viewing (RViz, rqt_image_view): turbo colormap.

ROS-free. Colour convention: NEAR is warm (red), FAR is cold (blue), whatever the input is.
Depth grows with distance, so by default the smallest value is red; disparity / inverse depth
(relative network output) grows as things get closer, so pass ``invert=True`` to make its
largest value red. Invalid (non-finite) pixels are black. For display only: never publish a
colourized image as depth.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# Turbo colormap, polynomial approximation (Apache-2.0, Google LLC, 2019).
# Colormap design: Anton Mikhailov; approximation: Ruofei Du. Coefficients of 1, t, ..., t^5
# for red, green and blue on t in [0, 1] (0 = near-black violet, then blue, ..., 1 = dark red).
_TURBO_COEFFS = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])

PERCENTILES = (2.0, 98.0)
"""Robust range used when ``vmin`` / ``vmax`` are not given."""

_MAX_RANGE_SAMPLES = 65536


class ColormapError(ValueError):
    """Input that cannot be colourized: wrong shape or dtype, non-finite range."""


def _turbo_lut() -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)
    powers = t[:, np.newaxis] ** np.arange(6)  # (256, 6)
    rgb = np.clip(powers @ _TURBO_COEFFS.T, 0.0, 1.0)
    return np.rint(rgb * 255.0).astype(np.uint8)


TURBO_LUT = _turbo_lut()
"""``(256, 3)`` uint8 turbo colours: index 0 (far) is near-black violet turning blue, 255 (near)
dark red."""
TURBO_LUT.flags.writeable = False


_LUT_WITH_BLACK = np.vstack([TURBO_LUT, np.zeros((1, 3), np.uint8)])  # index 256: invalid


def _robust_range(values: np.ndarray) -> Optional[tuple[float, float]]:
    """2nd / 98th percentiles of the finite values, None when there are none.

    Large images use an even pixel grid of at least ``_MAX_RANGE_SAMPLES`` pixels: for a
    colour scale the percentiles of that sample are as good as exact, at a fraction of the cost.
    """
    step = max(1, int(np.sqrt(values.size / _MAX_RANGE_SAMPLES)))
    sample = values[::step, ::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        sample = values[np.isfinite(values)]  # sparse valid pixels the grid missed
        if sample.size == 0:
            return None
    lo, hi = np.percentile(sample, PERCENTILES)
    return float(lo), float(hi)


def colorize(values: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None,
             invert: bool = False) -> np.ndarray:
    """Map a depth (or disparity) image to turbo colours.

    Parameters
    ----------
    values : np.ndarray
        ``(H, W)`` float image, e.g. metres; non-finite pixels are invalid.
    vmin, vmax : float, optional
        Value range mapped onto the colormap; values outside are clamped to its ends. Each one
        not given comes from the 2nd / 98th percentile of the finite values.
    invert : bool
        False (depth): ``vmin`` is near (red), ``vmax`` far (blue). True (disparity, inverse
        depth): ``vmax`` is near (red).

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 RGB; black where ``values`` is not finite (or all of it when no
        value is finite).
    """
    v = np.asarray(values)
    if v.ndim != 2:
        raise ColormapError(f'values must be a 2-D (H, W) image, got shape {v.shape}')
    if v.dtype.kind not in 'fiu':
        raise ColormapError(f'values must be numeric, got dtype {v.dtype}')
    if vmin is not None and vmax is not None and not float(vmin) < float(vmax):
        raise ColormapError(f'vmin must be below vmax, got {vmin}, {vmax}')
    v = v.astype(np.float32, copy=False)
    if vmin is None or vmax is None:
        robust = _robust_range(v)
        if robust is None:  # nothing finite: all black
            return np.zeros(v.shape + (3,), dtype=np.uint8)
        vmin = robust[0] if vmin is None else vmin
        vmax = robust[1] if vmax is None else vmax
    vmin, vmax = float(vmin), float(vmax)
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ColormapError(f'vmin and vmax must be finite, got {vmin}, {vmax}')
    span = vmax - vmin
    with np.errstate(invalid='ignore'):
        if span <= 0:  # constant image (or a given bound beyond the data): mid-scale
            t = np.full(v.shape, 127.5, dtype=np.float32)
        elif invert:  # larger = nearer = red = high LUT index
            t = (v - np.float32(vmin)) * np.float32(255.0 / span)
        else:  # smaller = nearer = red
            t = (np.float32(vmax) - v) * np.float32(255.0 / span)
        np.clip(np.rint(t, out=t), 0, 255, out=t)
    t[~np.isfinite(v)] = 256  # black
    return np.take(_LUT_WITH_BLACK, t.astype(np.intp), axis=0)


def robust_range(values: np.ndarray) -> Optional[tuple[float, float]]:
    """The range :func:`colorize` maps when no ``vmin`` / ``vmax`` is given: the 2nd and 98th
    percentiles of the finite values of the ``(H, W)`` image, None when none is finite."""
    return _robust_range(np.asarray(values, dtype=np.float32))


def add_colorbar(rgb: np.ndarray, vmin: float, vmax: float, metric: bool,
                 labels: Optional[tuple[str, str, str]] = None) -> np.ndarray:
    """Append a legend strip under a colourized image: the turbo scale from near (red, left) to
    far (blue, right), labelled with the range in metres, or "relative, near = red" for
    relative depth (no unit; the ends are only near and far).

    Parameters
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 image from :func:`colorize`.
    vmin, vmax : float
        The range it was colourized with (metres when ``metric``).
    metric : bool
        True for depth in metres (``vmin`` near), False for relative inverse depth.
    labels : tuple of str, optional
        ``(left, right, title)`` instead of the depth words (e.g. a confidence picture).

    Returns
    -------
    np.ndarray
        ``(H + bar, W, 3)`` uint8: the image unchanged on top, the legend below.
    """
    from PIL import Image, ImageDraw, ImageFont

    height, width = rgb.shape[:2]
    font_px = max(10, min(32, width // 40))
    strip_h = 3 * font_px + 8
    bar_h = font_px
    margin = max(2, width // 50)
    legend = np.zeros((strip_h, width, 3), dtype=np.uint8)
    # left = near = LUT end 255, right = far = LUT start 0
    index = np.linspace(255, 0, max(1, width - 2 * margin)).round().astype(np.intp)
    legend[2:2 + bar_h, margin:width - margin] = TURBO_LUT[index][np.newaxis]
    image = Image.fromarray(legend)
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=font_px)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    if labels is not None:
        left, right, title = labels
    elif metric:
        left, right, title = f'{vmin:.2f} m', f'{vmax:.2f} m', 'depth (metres), near = red'
    else:
        left, right, title = 'near', 'far', 'relative depth (no unit), near = red'
    y = 4 + bar_h
    draw.text((margin, y), left, fill=(255, 255, 255), font=font)
    right_w = draw.textlength(right, font=font)
    draw.text((width - margin - right_w, y), right, fill=(255, 255, 255), font=font)
    title_w = draw.textlength(title, font=font)
    draw.text(((width - title_w) / 2, y), title, fill=(255, 255, 255), font=font)
    return np.concatenate([np.asarray(rgb, dtype=np.uint8), np.asarray(image)], axis=0)
