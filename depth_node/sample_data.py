"""Read frames in the uniform real-data layout (image, LiDAR scan, calibration, dense depth).

Each frame folder holds ``image.png`` or ``image.jpg``, ``camera.json`` and optionally
``lidar.npy`` (float32 ``(N, 4)``: x, y, z, intensity in the LiDAR frame) and ``depth_gt.png``
(uint16, metres = value x ``depth_scale``, 0 = invalid).
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path
from typing import Optional

import numpy as np

from depth_node.camera_info import Intrinsics, intrinsics_from_fields


class SampleDataError(ValueError):
    """A frame folder is missing a file or holds malformed calibration."""


@dataclass(frozen=True)
class Frame:
    """One recorded frame.

    Attributes
    ----------
    name : str
        ``<set>/<frame>`` folder name.
    image : np.ndarray
        ``(height, width, 3)`` uint8 RGB.
    K : np.ndarray
        ``(3, 3)`` float64 camera matrix, pixels.
    D : np.ndarray
        Distortion coefficients for ``distortion_model`` (ROS order).
    distortion_model : str
        ``plumb_bob``, ``rational_polynomial``, ``equidistant`` or ``none``.
    rectified : bool
        True when the image is already undistorted.
    lidar : np.ndarray or None
        ``(N, 4)`` float32 x, y, z (metres, LiDAR frame), intensity.
    T_camera_lidar : np.ndarray or None
        ``(4, 4)`` float64 transform mapping LiDAR points into the camera optical frame.
    depth_gt : np.ndarray or None
        ``(height, width)`` float32 metres along the optical axis, NaN where invalid.
    """

    name: str
    image: np.ndarray
    K: np.ndarray
    D: np.ndarray
    distortion_model: str
    rectified: bool
    lidar: Optional[np.ndarray]
    T_camera_lidar: Optional[np.ndarray]
    depth_gt: Optional[np.ndarray]

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def intrinsics(self) -> Intrinsics:
        """The frame's calibration as the node reads it from a CameraInfo (no P, no R)."""
        return intrinsics_from_fields(self.width, self.height, self.K.ravel(), self.D,
                                      self.distortion_model, [0.0] * 12, [0.0] * 9)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def load_frame(folder: Path | str) -> Frame:
    """Load one frame folder; raise :class:`SampleDataError` naming the missing piece."""
    from PIL import Image

    folder = Path(folder)
    calib_path = folder / 'camera.json'
    if not calib_path.is_file():
        raise SampleDataError(f'{folder}: no camera.json; is this a frame folder?')
    calib = json.loads(calib_path.read_text())
    images = [p for p in (folder / 'image.png', folder / 'image.jpg') if p.is_file()]
    if not images:
        raise SampleDataError(f'{folder}: no image.png or image.jpg')
    with Image.open(images[0]) as im:
        rgb = np.asarray(im.convert('RGB'))
    lidar = None
    if (folder / 'lidar.npy').is_file():
        lidar = np.load(folder / 'lidar.npy').astype(np.float32, copy=False)
    depth_gt = None
    if (folder / 'depth_gt.png').is_file():
        with Image.open(folder / 'depth_gt.png') as im:
            raw = np.asarray(im).astype(np.float32)
        depth_gt = raw * float(calib.get('depth_scale', 0.001))
        depth_gt[raw == 0] = np.nan
    T = calib.get('T_camera_lidar')
    return Frame(
        name=f'{folder.parent.name}/{folder.name}',
        image=rgb,
        K=np.asarray(calib['K'], dtype=np.float64).reshape(3, 3),
        D=np.asarray(calib.get('D') or [], dtype=np.float64),
        distortion_model=str(calib.get('distortion_model') or 'none'),
        rectified=bool(calib.get('rectified', True)),
        lidar=lidar,
        T_camera_lidar=None if T is None else np.asarray(T, dtype=np.float64).reshape(4, 4),
        depth_gt=depth_gt,
    )


def frame_folders(root: Path | str) -> list[Path]:
    """All frame folders (those holding ``camera.json``) under ``root``, sorted."""
    return sorted(p.parent for p in Path(root).glob('**/camera.json'))
