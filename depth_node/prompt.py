"""Depth prompts for Prompt Depth Anything: a coarse metric depth map from an RGB-D camera or
a LiDAR scan, made ready for the network (ROS-free).

Prompt Depth Anything (``PromptDepthAnythingForDepthEstimation``) takes the colour image and a
low-resolution metric depth map of the same view, the *prompt*, and returns metric depth at the
image's resolution. The network normalises the prompt by its own minimum and maximum and maps
its output back with them: one zero or NaN in the prompt ruins the scale of the whole frame.
This module makes the prompt:

1. **a grid** (:func:`prompt_grid`): the prompt keeps the image's aspect ratio with its long
   side at most ``prompt.max_side`` pixels (256: the 256 x 192 iPhone LiDAR depth the published
   models were trained with). The network resamples the prompt to each of its decoder's scales,
   so the grid's size is a matter of how much the sensor has to say, not a network constraint;
2. **from a sensor**, invalid cells NaN: :func:`from_depth_image` (an RGB-D camera's depth
   registered to the colour camera, ``16UC1`` millimetres or ``32FC1`` metres, 0 / NaN / <= 0
   invalid: each cell the mean of its valid pixels) or :func:`from_lidar` (the projected,
   occlusion-filtered points of :func:`depth_node.lidar.prepare_points`: each cell the nearest
   point in it);
3. **checked** (:func:`check_prompt`): the fraction of valid cells (:func:`coverage`) must
   reach ``prompt.min_coverage``; otherwise the frame has no metric output (counted);
4. **filled** (:func:`fill_holes`, done by the estimator before the forward pass): every
   invalid cell gets a value from its valid neighbourhood (push-pull: averages over coarser
   and coarser grids), valid cells keep theirs exactly;
5. **compared** (:func:`agreement`) with the network's output: the median absolute relative
   error of the output against the valid prompt cells, on ``depth/alignment``.

Units: metres along the camera's optical axis; arrays are ``(rows, columns)`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from depth_node.image_codec import ImageDecodeError, decode_relative_depth

#: ``prompt.source``: '' (no prompt), an RGB-D camera's depth image, or the LiDAR scan.
PROMPT_SOURCES = ('', 'depth_image', 'lidar')

#: Encodings of a depth prompt image and the factor to metres of their values.
PROMPT_ENCODINGS = {'16UC1': 0.001, '32FC1': 1.0}

#: States of a frame's prompt (:class:`PromptCheck`).
PROMPT_STATES = ('ok', 'missing', 'stale', 'low_coverage', 'bad')


class PromptError(ValueError):
    """A prompt that cannot be used (no valid value, wrong shape); the message says why."""


def prompt_grid(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(rows, columns)`` of the prompt for a ``height`` x ``width`` source: the same aspect
    ratio, the long side ``min(max_side, long side)``, at least 1 x 1 (never larger than the
    source: a prompt is not upsampled)."""
    height, width, max_side = int(height), int(width), int(max_side)
    if height < 1 or width < 1 or max_side < 1:
        raise PromptError(f'prompt grid needs positive sizes, got {width}x{height}, max side '
                          f'{max_side}')
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _edges(size: int, cells: int) -> np.ndarray:
    """First source index of each of ``cells`` equal blocks of ``size`` (``size >= cells``)."""
    return (np.arange(cells, dtype=np.int64) * size) // cells


def block_mean(depth: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The mean of the valid (finite, > 0) pixels of each block of ``depth``.

    Parameters
    ----------
    depth : np.ndarray
        ``(H, W)`` depth in metres; NaN, infinities and values <= 0 are invalid.
    grid : tuple of int
        ``(rows, columns)``, at most ``(H, W)``: the blocks are the rows ``[i H / rows,
        (i + 1) H / rows)`` by the matching columns.

    Returns
    -------
    np.ndarray
        ``(rows, columns)`` float32, NaN where a block has no valid pixel.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise PromptError(f'depth must be (H, W), got shape {depth.shape}')
    rows, cols = int(grid[0]), int(grid[1])
    height, width = depth.shape
    if not (1 <= rows <= height and 1 <= cols <= width):
        raise PromptError(f'grid {cols}x{rows} must be between 1x1 and the depth size '
                          f'{width}x{height}')
    with np.errstate(invalid='ignore'):
        valid = np.isfinite(depth) & (depth > 0)
    values = np.where(valid, depth, 0.0).astype(np.float64)
    r, c = _edges(height, rows), _edges(width, cols)
    sums = np.add.reduceat(np.add.reduceat(values, r, axis=0), c, axis=1)
    counts = np.add.reduceat(np.add.reduceat(valid.astype(np.int64), r, axis=0), c, axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(counts > 0, sums / counts, np.nan).astype(np.float32)


def decode_prompt_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                        data) -> np.ndarray:
    """A depth prompt image (``sensor_msgs/Image`` fields) as metres.

    ``16UC1`` is millimetres with 0 = no measurement (REP 117); ``32FC1`` is metres with NaN
    (or any value <= 0, or infinity) = no measurement.

    Returns
    -------
    np.ndarray
        ``(height, width)`` float32 metres, NaN where there is no measurement.

    Raises
    ------
    ImageDecodeError
        Another encoding, or fields that do not describe the data.
    """
    if encoding not in PROMPT_ENCODINGS:
        raise ImageDecodeError(f'depth prompt encoding {str(encoding)[:64]!r} is not supported; '
                               'use 16UC1 (millimetres) or 32FC1 (metres)')
    depth = decode_relative_depth(encoding, height, width, step, is_bigendian, data)
    scale = PROMPT_ENCODINGS[encoding]
    if scale != 1.0:
        depth *= np.float32(scale)
    with np.errstate(invalid='ignore'):
        depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


def from_depth_image(depth: np.ndarray, image_size: tuple[int, int], max_side: int,
                     max_aspect_error: float = 0.01) -> np.ndarray:
    """The prompt from an RGB-D camera's depth image registered to the colour image.

    Parameters
    ----------
    depth : np.ndarray
        ``(H, W)`` float32 metres, NaN invalid (:func:`decode_prompt_image`): the view of the
        colour image (``depth_registered``), any resolution of the same aspect ratio.
    image_size : tuple of int
        ``(height, width)`` of the colour image.
    max_side : int
        ``prompt.max_side``.

    Returns
    -------
    np.ndarray
        ``(rows, columns)`` float32 metres (:func:`prompt_grid` of the depth image's size;
        each cell the mean of its valid pixels), NaN where a cell has none.

    Raises
    ------
    PromptError
        The depth image's aspect ratio differs from the colour image's by more than
        ``max_aspect_error`` (relative): it is not registered to this camera.
    """
    height, width = np.shape(depth)[:2]
    why = same_view((height, width), image_size, max_aspect_error)
    if why:
        raise PromptError(why)
    return block_mean(depth, prompt_grid(height, width, max_side))


def from_lidar(uv: np.ndarray, z: np.ndarray, image_size: tuple[int, int],
               max_side: int) -> np.ndarray:
    """The prompt from projected LiDAR points: each cell the nearest point falling in it.

    Parameters
    ----------
    uv : np.ndarray
        ``(M, 2)`` pixel coordinates in the ``image_size`` image (pixel centres at integers),
        from :func:`depth_node.lidar.prepare_points` (occlusion-filtered).
    z : np.ndarray
        ``(M,)`` depth along the optical axis, metres.
    image_size : tuple of int
        ``(height, width)`` of the image the points were projected into.
    max_side : int
        ``prompt.max_side``.

    Returns
    -------
    np.ndarray
        ``(rows, columns)`` float32 metres (:func:`prompt_grid` of ``image_size``), NaN where
        no point falls.
    """
    height, width = int(image_size[0]), int(image_size[1])
    rows, cols = prompt_grid(height, width, max_side)
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    if uv.shape[0] != z.shape[0]:
        raise PromptError(f'uv has {uv.shape[0]} points, z {z.shape[0]}')
    with np.errstate(invalid='ignore'):
        good = np.isfinite(z) & (z > 0) & np.isfinite(uv).all(axis=1)
    uv, z = uv[good], z[good]
    col = np.clip(((uv[:, 0] + 0.5) * cols / width).astype(np.int64), 0, cols - 1)
    row = np.clip(((uv[:, 1] + 0.5) * rows / height).astype(np.int64), 0, rows - 1)
    cells = np.full(rows * cols, np.inf)
    np.minimum.at(cells, row * cols + col, z)
    cells[np.isinf(cells)] = np.nan
    return cells.reshape(rows, cols).astype(np.float32)


def valid_mask(prompt: np.ndarray) -> np.ndarray:
    """Where ``prompt`` holds a measurement: finite and > 0."""
    prompt = np.asarray(prompt)
    with np.errstate(invalid='ignore'):
        return np.isfinite(prompt) & (prompt > 0)


def coverage(prompt: np.ndarray) -> float:
    """The fraction (0 to 1) of the prompt's cells that hold a measurement."""
    prompt = np.asarray(prompt)
    return float(valid_mask(prompt).mean()) if prompt.size else 0.0


def fill_holes(prompt: np.ndarray) -> np.ndarray:
    """Every invalid cell of ``prompt`` filled from its valid neighbourhood (push-pull).

    The valid cells are averaged into a pyramid of grids each half the size of the one before
    (a cell of a coarser grid: the mean of the valid cells under it) until a grid has no hole
    or one cell is left; then, from the coarsest grid down, each hole takes the value of the
    coarser cell above it. Valid cells keep their values exactly; a hole gets the mean of the
    nearest valid cells at the scale of the hole. The result has no NaN, zero or negative value
    (the network normalises the prompt by its minimum and maximum).

    Parameters
    ----------
    prompt : np.ndarray
        ``(h, w)`` metres; NaN, infinities and values <= 0 are holes.

    Returns
    -------
    np.ndarray
        ``(h, w)`` float32, every value finite and > 0.

    Raises
    ------
    PromptError
        ``prompt`` is not 2-D or has no valid cell.
    """
    prompt = np.asarray(prompt)
    if prompt.ndim != 2 or prompt.size == 0:
        raise PromptError(f'a prompt must be a non-empty (h, w) array, got shape {prompt.shape}')
    valid = valid_mask(prompt)
    if not valid.any():
        raise PromptError('the prompt has no valid value (all NaN, zero or negative)')
    values = np.where(valid, prompt, 0.0).astype(np.float64)
    weights = valid.astype(np.float64)
    levels = [(values, weights)]
    while not (weights > 0).all() and max(values.shape) > 1:
        h, w = values.shape
        ph, pw = h + h % 2, w + w % 2  # pad to even with empty cells
        vs = np.zeros((ph, pw))
        ws = np.zeros((ph, pw))
        vs[:h, :w] = values * weights
        ws[:h, :w] = weights
        sums = vs.reshape(ph // 2, 2, pw // 2, 2).sum(axis=(1, 3))
        weights = ws.reshape(ph // 2, 2, pw // 2, 2).sum(axis=(1, 3))
        with np.errstate(invalid='ignore', divide='ignore'):
            values = np.where(weights > 0, sums / weights, 0.0)
        weights = (weights > 0).astype(np.float64)  # a mean of valid cells is one valid cell
        levels.append((values, weights))
    filled = levels[-1][0]
    for values, weights in reversed(levels[:-1]):
        h, w = values.shape
        coarse = np.repeat(np.repeat(filled, 2, axis=0), 2, axis=1)[:h, :w]
        filled = np.where(weights > 0, values, coarse)
    out = filled.astype(np.float32)
    out[valid] = prompt[valid]  # exactly, whatever the dtype went through
    return out


def agreement(depth: np.ndarray, prompt: np.ndarray) -> float:
    """How well the network's metric output agrees with the prompt's measurements.

    Parameters
    ----------
    depth : np.ndarray
        ``(H, W)`` metres (the output; NaN invalid), at least the prompt's size.
    prompt : np.ndarray
        ``(h, w)`` metres as measured (before :func:`fill_holes`), NaN invalid.

    Returns
    -------
    float
        The median over the prompt's valid cells of ``|d - p| / p``, where ``d`` is the mean
        of the output over the cell's block (:func:`block_mean`); NaN when no cell has both.
    """
    prompt = np.asarray(prompt)
    out = block_mean(depth, prompt.shape)
    both = valid_mask(prompt) & valid_mask(out)
    if not both.any():
        return math.nan
    p = prompt[both].astype(np.float64)
    return float(np.median(np.abs(out[both] - p) / p))


@dataclass(frozen=True)
class PromptCheck:
    """What became of a frame's prompt.

    Attributes
    ----------
    state : str
        One of :data:`PROMPT_STATES`: ``'ok'`` (use ``prompt``), ``'missing'`` (none
        received), ``'stale'`` (the nearest is further than ``prompt.max_time_offset`` from
        the frame), ``'low_coverage'`` (fewer valid cells than ``prompt.min_coverage``),
        ``'bad'`` (a prompt that cannot serve this frame: another view, a camera_info the
        LiDAR projection cannot use, no transform).
    prompt : np.ndarray or None
        ``(h, w)`` metres, NaN invalid (not yet filled) when ``state`` is ``'ok'``.
    coverage : float
        Fraction of valid cells (NaN without a prompt).
    time_offset : float
        ``|frame stamp - prompt stamp|`` in seconds (NaN without a prompt).
    reason : str
        Why there is no usable prompt (empty when ``'ok'``).
    """

    state: str
    prompt: Optional[np.ndarray] = None
    coverage: float = math.nan
    time_offset: float = math.nan
    reason: str = ''


def check_prompt(prompt: Optional[np.ndarray], stamp: float, prompt_stamp: float,
                 max_time_offset: float, min_coverage: float, what: str = 'prompt') -> PromptCheck:
    """Whether ``prompt`` (taken at ``prompt_stamp``, seconds) serves a frame taken at
    ``stamp``: close enough in time and covered enough.

    ``prompt`` None means none was received (``'missing'``). ``what`` names the source in the
    reason (e.g. ``'prompt_depth'``).
    """
    if prompt is None:
        return PromptCheck('missing', reason=f'no {what} received')
    offset = abs(float(stamp) - float(prompt_stamp))
    share = coverage(prompt)
    if offset > max_time_offset:
        return PromptCheck('stale', coverage=share, time_offset=offset,
                           reason=f'the nearest {what} is {offset:.3f} s from the image, over '
                                  f'prompt.max_time_offset {max_time_offset:g} s')
    if share < min_coverage or share == 0.0:
        return PromptCheck('low_coverage', coverage=share, time_offset=offset,
                           reason=f'{what} covers {100 * share:.1f} % of the prompt grid, under '
                                  f'prompt.min_coverage {100 * min_coverage:g} %')
    return PromptCheck('ok', prompt=prompt, coverage=share, time_offset=offset)


@dataclass(frozen=True)
class PromptImage:
    """A received ``prompt_depth`` image, reduced to its prompt grid on arrival.

    Attributes
    ----------
    stamp : float
        Header stamp, seconds.
    frame_id : str
    grid : np.ndarray
        ``(rows, columns)`` float32 metres, NaN where no measurement (:func:`block_mean` of the
        image over :func:`prompt_grid` of its own size).
    size : tuple of int
        ``(height, width)`` of the image as received (its view is checked against the colour
        image's with :func:`same_view`).
    """

    stamp: float
    frame_id: str
    grid: np.ndarray
    size: tuple[int, int]


def prompt_from_message(msg, max_side: int) -> PromptImage:
    """A ``sensor_msgs/Image`` on ``prompt_depth`` (any object with its fields: rclpy or rosbags
    messages) as a :class:`PromptImage`.

    Raises
    ------
    ImageDecodeError
        Not 16UC1 / 32FC1, or fields that do not describe the data.
    """
    depth = decode_prompt_image(msg.encoding, msg.height, msg.width, msg.step,
                                bool(msg.is_bigendian), msg.data)
    height, width = depth.shape
    if height == 0 or width == 0:
        raise ImageDecodeError(f'empty depth prompt {width}x{height}')
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    return PromptImage(stamp, str(msg.header.frame_id),
                       block_mean(depth, prompt_grid(height, width, max_side)), (height, width))


def same_view(depth_size: tuple[int, int], image_size: tuple[int, int],
              max_aspect_error: float = 0.01) -> Optional[str]:
    """Why a depth image of ``depth_size`` ``(height, width)`` cannot be the registered view of
    a colour image of ``image_size``, or None when its aspect ratio agrees."""
    (dh, dw), (ih, iw) = depth_size, image_size
    if abs((dw / dh) / (iw / ih) - 1.0) <= max_aspect_error:
        return None
    return (f'the depth prompt is {dw}x{dh}, the colour image {iw}x{ih}: a different aspect '
            'ratio, so not the same view; publish the depth registered to the colour camera '
            "(e.g. a driver's depth_registered or aligned_depth_to_color topic)")


def lidar_prompt(points_lidar: np.ndarray, T_camera_lidar: np.ndarray, intrinsics,
                 image_size: tuple[int, int], max_side: int,
                 occlusion_window: int = 5) -> tuple[np.ndarray, int]:
    """The prompt from a LiDAR scan: projected into the image with the camera's distortion,
    occlusion-filtered (:func:`depth_node.lidar.prepare_points`), then :func:`from_lidar`.

    Parameters
    ----------
    points_lidar : np.ndarray
        ``(N, 3)`` points in the LiDAR frame, metres.
    T_camera_lidar : np.ndarray
        ``(4, 4)`` LiDAR frame to camera optical frame.
    intrinsics : depth_node.camera_info.Intrinsics
        The camera_info fitted to the image of ``image_size``.
    image_size : tuple of int
        ``(height, width)`` of the image the network gets.

    Returns
    -------
    grid : np.ndarray
        ``(rows, columns)`` float32 metres, NaN where no point falls.
    projected : int
        How many points survived projection and the occlusion test.

    Raises
    ------
    depth_node.lidar.LidarError
        Distortion the LiDAR camera model cannot take, or a bad transform.
    """
    from depth_node.lidar import prepare_points

    height, width = int(image_size[0]), int(image_size[1])
    uv, z = prepare_points(points_lidar, T_camera_lidar, intrinsics, width, height,
                           occlusion_window=occlusion_window)
    return from_lidar(uv, z, (height, width), max_side), int(len(z))


def setup_error(takes_prompt: bool, source: str, model_name: str) -> Optional[str]:
    """Why ``prompt.source`` does not suit the model (None when it does)."""
    if takes_prompt and not source:
        return (f"'{model_name}' is a Prompt Depth Anything model: it needs a metric depth "
                "prompt; set prompt.source to 'depth_image' (an RGB-D camera's depth on "
                "prompt_depth) or 'lidar' (the scans on lidar/points)")
    if source and not takes_prompt:
        return (f"prompt.source '{source}' is set but '{model_name}' takes no depth prompt; "
                "use a Prompt Depth Anything model or set prompt.source ''")
    return None


@dataclass
class PromptReport:
    """What ``depth/alignment`` says about one frame's depth prompt.

    ``check`` is the frame's :class:`PromptCheck`; ``agreement`` the median absolute relative
    error of the output against the valid prompt cells (:func:`agreement`; NaN without output);
    ``points`` the LiDAR points projected for it (0 for a depth image); ``source`` the
    ``prompt.source``.
    """

    check: PromptCheck
    agreement: float
    points: int
    source: str
    frame_id: str
    stamp: tuple[int, int]

    @property
    def level(self) -> int:
        """diagnostic_msgs/DiagnosticStatus level: 0 OK, 2 ERROR (no metric output)."""
        return 0 if self.check.state == 'ok' else 2

    def values(self) -> dict[str, str]:
        """The status's key/value pairs (``reason`` as given: the caller bounds its length)."""
        c = self.check
        return {k: str(v) for k, v in {
            'state': c.state, 'prompt_source': self.source, 'prompt_coverage': c.coverage,
            'prompt_agreement': self.agreement, 'prompt_time_offset': c.time_offset,
            'points_projected': self.points, 'reason': c.reason,
            'stamp': f'{self.stamp[0]}.{self.stamp[1]:09d}'}.items()}


def _nearest(items: Sequence, stamp: float, stamp_of: Callable[[Any], float]) -> Optional[Any]:
    return min(items, key=lambda item: abs(stamp_of(item) - stamp)) if items else None


def prompt_for_frame(source: str, stamp: float, image_size: tuple[int, int], *,
                     max_time_offset: float, min_coverage: float, max_side: int,
                     images: Sequence[PromptImage] = (), scans: Sequence[tuple] = (),
                     intrinsics: Any = None,
                     transform: Optional[Callable[[str], Optional[np.ndarray]]] = None,
                     occlusion_window: int = 5) -> tuple[PromptCheck, int]:
    """The prompt of one frame, from the buffered inputs nearest its stamp (the node and any
    other caller share this; nothing here logs or counts).

    Parameters
    ----------
    source : str
        ``prompt.source``: ``'depth_image'`` or ``'lidar'``.
    stamp : float
        The frame's header stamp, seconds.
    image_size : tuple of int
        ``(height, width)`` of the image the network gets.
    max_time_offset, min_coverage, max_side
        ``prompt.max_time_offset`` (s), ``prompt.min_coverage``, ``prompt.max_side``.
    images : sequence of PromptImage
        ``depth_image``: the buffered ``prompt_depth`` images.
    scans : sequence of (stamp_s, frame_id, (N, 3) xyz)
        ``lidar``: the buffered LiDAR scans (LiDAR frame, metres).
    intrinsics : depth_node.camera_info.Intrinsics or None
        ``lidar``: the camera_info fitted to ``image_size`` (None: none that fits).
    transform : callable
        ``lidar``: ``transform(lidar_frame_id)`` -> ``(4, 4)`` LiDAR-to-camera transform, or
        None when there is none.
    occlusion_window : int
        ``lidar.occlusion_window``.

    Returns
    -------
    check : PromptCheck
        ``'ok'`` with the prompt (``(rows, columns)`` metres, NaN holes), or why not.
    projected : int
        LiDAR points projected into the image (0 for a depth image).
    """
    if source == 'depth_image':
        nearest = _nearest(images, stamp, lambda p: p.stamp)
        if nearest is None:
            return check_prompt(None, stamp, math.nan, max_time_offset, min_coverage,
                                'prompt_depth'), 0
        check = check_prompt(nearest.grid, stamp, nearest.stamp, max_time_offset, min_coverage,
                             'prompt_depth')
        why = same_view(nearest.size, image_size) if check.state == 'ok' else None
        if why:
            return PromptCheck('bad', coverage=check.coverage, time_offset=check.time_offset,
                               reason=why), 0
        return check, 0
    if source != 'lidar':
        raise PromptError(f"prompt.source {source!r} is not 'depth_image' or 'lidar'")
    from depth_node.lidar import LidarError

    scan = _nearest(scans, stamp, lambda s: s[0])
    if scan is None:
        return PromptCheck('missing', reason='no LiDAR scan received'), 0
    offset = abs(stamp - scan[0])
    if offset > max_time_offset:
        return PromptCheck('stale', time_offset=offset,
                           reason=f'the nearest LiDAR scan is {offset:.3f} s from the image, '
                                  f'over prompt.max_time_offset {max_time_offset:g} s'), 0
    bad = None
    T = None
    if intrinsics is None:
        bad = 'no camera_info that fits the image: the LiDAR scan cannot be projected'
    else:
        T = transform(scan[1]) if transform is not None else None
        if T is None:
            bad = f'no transform from the LiDAR frame {str(scan[1])[:64]!r} to the camera'
    if bad is None:
        try:
            grid, projected = lidar_prompt(scan[2], T, intrinsics, image_size, max_side,
                                           occlusion_window)
        except LidarError as exc:
            bad = f'the LiDAR scan cannot be projected: {exc}'
    if bad is not None:
        return PromptCheck('bad', time_offset=offset, reason=bad), 0
    return check_prompt(grid, stamp, scan[0], max_time_offset, min_coverage,
                        'LiDAR scan'), projected
