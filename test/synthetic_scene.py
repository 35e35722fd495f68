"""A synthetic scene for the occlusion (parallax) filter: a plate in front of a wall.

The camera (optical frame: x right, y down, z forward) looks at a 0.8 m x 0.6 m plate 2 m away,
centred on its optical axis, in front of a wall 6 m away. The LiDAR sits 0.3 m above and 0.1 m
behind the camera (the mounting of ``test_node_lidar.py``), so it sees strips of the wall that
the plate hides from the camera: above the plate's top edge and beside its left and right
edges. Projected into the camera those wall returns land on the plate's pixels, just inside its
edges. Which points are hidden is told from the 3-D geometry (the camera ray to the point
crosses the plate), not by the filter under test.

Import from tests as ``from synthetic_scene import plate_and_wall``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WIDTH, HEIGHT = 640, 480
K = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])
PLATE_Z, WALL_Z = 2.0, 6.0              # metres along the optical axis
PLATE_HALF_X, PLATE_HALF_Y = 0.4, 0.3   # metres
# The plate's outline in the image, pixels: |u - cx| <= 100, |v - cy| <= 75.
PLATE_HALF_U = K[0, 0] * PLATE_HALF_X / PLATE_Z
PLATE_HALF_V = K[1, 1] * PLATE_HALF_Y / PLATE_Z

# Camera optical frame from a LiDAR frame (x forward, y left, z up): the LiDAR 0.3 m above and
# 0.1 m behind the camera.
R_CAM_LIDAR = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
T_CAMERA_LIDAR = np.eye(4)
T_CAMERA_LIDAR[:3, :3] = R_CAM_LIDAR
T_CAMERA_LIDAR[:3, 3] = R_CAM_LIDAR @ np.array([-0.1, 0.0, 0.3])


@dataclass
class Scene:
    """The scan and what each of its points is.

    points_lidar : ``(N, 3)`` float32, the scan in the LiDAR frame, metres.
    points_cam : ``(N, 3)`` float64, the same points in the camera optical frame.
    uv : ``(N, 2)`` float64, their pixels in the camera (no distortion).
    on_plate, hidden, in_view : ``(N,)`` bool: the point is on the plate; on the wall behind
    the plate as the camera sees it (a LiDAR-only return); inside the image.
    depth : ``(HEIGHT, WIDTH)`` float32, the camera's true depth image, metres.
    """

    points_lidar: np.ndarray
    points_cam: np.ndarray
    uv: np.ndarray
    on_plate: np.ndarray
    hidden: np.ndarray
    in_view: np.ndarray
    depth: np.ndarray

    def outside_plate_by(self, margin: float) -> np.ndarray:
        """``(N,)`` bool: the point's pixel lies more than ``margin`` px outside the plate's
        outline in the image."""
        du = np.abs(self.uv[:, 0] - K[0, 2]) - PLATE_HALF_U
        dv = np.abs(self.uv[:, 1] - K[1, 2]) - PLATE_HALF_V
        return np.maximum(du, dv) > margin


def plate_and_wall(step: float = 0.003) -> Scene:
    """The scan: LiDAR rays on a grid of ``step`` (tangent of the angle, about 1.5 px in the
    camera at both depths), each ending on the plate or, past it, on the wall."""
    origin = T_CAMERA_LIDAR[:3, 3]   # the LiDAR's centre in the camera frame
    a, b = np.meshgrid(np.arange(-0.6, 0.6, step), np.arange(-0.45, 0.45, step))
    d = np.stack([a.ravel(), b.ravel(), np.ones(a.size)], axis=1)   # rays, camera axes
    t_plate = (PLATE_Z - origin[2]) / d[:, 2]
    at_plate = origin + t_plate[:, None] * d
    on_plate = ((np.abs(at_plate[:, 0]) <= PLATE_HALF_X) &
                (np.abs(at_plate[:, 1]) <= PLATE_HALF_Y))
    t_wall = (WALL_Z - origin[2]) / d[:, 2]
    points = np.where(on_plate[:, None], at_plate, origin + t_wall[:, None] * d)
    # hidden: a wall point whose ray from the camera centre crosses the plate
    through = points[:, :2] * (PLATE_Z / points[:, 2:3])
    hidden = (~on_plate & (np.abs(through[:, 0]) <= PLATE_HALF_X) &
              (np.abs(through[:, 1]) <= PLATE_HALF_Y))
    uv = points[:, :2] / points[:, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    in_view = ((uv[:, 0] >= 0) & (uv[:, 0] <= WIDTH - 1) &
               (uv[:, 1] >= 0) & (uv[:, 1] <= HEIGHT - 1))
    T_inv = np.linalg.inv(T_CAMERA_LIDAR)
    points_lidar = (points @ T_inv[:3, :3].T + T_inv[:3, 3]).astype(np.float32)
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH]
    plate_px = ((np.abs(u - K[0, 2]) <= PLATE_HALF_U) & (np.abs(v - K[1, 2]) <= PLATE_HALF_V))
    depth = np.where(plate_px, PLATE_Z, WALL_Z).astype(np.float32)
    return Scene(points_lidar, points, uv, on_plate, hidden, in_view, depth)
