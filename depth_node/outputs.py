"""The output table: every topic a frame can produce, declared once (ROS-free).

Each :class:`Output` says its key (what :class:`depth_node.frame_pipeline.FramePipeline` hands
the sink), its topic (relative to the camera's namespace), its message type, how the message is
filled from the pipeline's value, when it exists and when it is built. The node's publishers,
the bag tool's writer, the README's topic table check and the benchmark's sink all read
:data:`OUTPUTS`; :func:`build_message` is the one mapping from a value to its message, with a
:class:`MessageFactory` for the message classes at hand (rclpy's in the node,
:mod:`depth_node.messages`; ``rosbags``' in the bag tool). Adding an output is one entry here
plus its computation in the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np

from depth_node.prompt import PromptReport
from depth_node.text import bounded

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
POINT_CLOUD = 'sensor_msgs/msg/PointCloud2'
DIAGNOSTIC_STATUS = 'diagnostic_msgs/msg/DiagnosticStatus'
DIAGNOSTIC_ARRAY = 'diagnostic_msgs/msg/DiagnosticArray'


def _always(config: Any) -> bool:
    return True


def _with_alignment(config: Any) -> bool:
    return bool(config['lidar.enabled'] or config['prompt.source'])


@dataclass(frozen=True)
class Output:
    """One output topic.

    ``fill``: how the message is built from the pipeline's value: ``image`` ((H, W) or
    (H, W, 3) array, ``encoding`` or, when None, from the dtype: uint16 ``16UC1``, else
    ``32FC1``), ``camera_info`` (:class:`~depth_node.camera_info.Intrinsics`), ``cloud``
    (:class:`~depth_node.cloud.PackedCloud`) or ``status`` (an alignment or prompt report:
    ``diagnostic_msgs/DiagnosticStatus``). ``exists(config)``: whether the topic is advertised
    at all. ``lazy``: built only while someone subscribes (False: always sent). ``bag_option``:
    the ``depth_node-bag`` flag that writes it ('' = always written). ``qos_overrides``:
    whether its QoS can be overridden by parameters (``qos_overrides.<topic>.publisher.*``).
    ``when`` and ``content``: the README's words.
    """

    key: str
    topic: str
    msg_type: str
    fill: str
    when: str
    content: str
    encoding: Optional[str] = None
    exists: Callable[[Any], bool] = _always
    lazy: bool = True
    bag_option: str = ''
    qos_overrides: bool = True


OUTPUTS: tuple[Output, ...] = (
    Output('depth', 'depth/image', IMAGE, 'image', 'depth is metric',
           '32FC1 metres along optical z, NaN invalid; or 16UC1 millimetres, 0 invalid'),
    Output('relative', 'depth/relative', IMAGE, 'image', 'relative model, `output.relative`',
           '32FC1 prediction (held steady with `temporal.enabled`), no unit', encoding='32FC1'),
    Output('info', 'depth/camera_info', CAMERA_INFO, 'camera_info',
           'with every depth-like image', 'the camera_info of the depth image itself'),
    Output('points', 'depth/points', POINT_CLOUD, 'cloud',
           'metric depth, camera_info, `cloud.enabled`', 'x, y, z (+ rgb) in the optical frame',
           bag_option='--points'),
    Output('colored', 'depth/colored', IMAGE, 'image', 'only while someone subscribes',
           'rgb8 turbo colormap', encoding='rgb8', bag_option='--colored',
           qos_overrides=False),
    Output('confidence', 'depth/confidence', IMAGE, 'image',
           'only while someone subscribes (or `cloud.min_confidence` gates the cloud)',
           '32FC1 in [0, 1], NaN where the depth is invalid', encoding='32FC1',
           bag_option='--confidence'),
    Output('alignment', 'depth/alignment', DIAGNOSTIC_STATUS, 'status',
           '`lidar.enabled` or `prompt.source`', 'the frame\'s LiDAR fit or depth prompt',
           exists=_with_alignment, lazy=False, qos_overrides=False),
)
"""Every output, in the order a frame produces them."""

OUTPUTS_BY_KEY = {o.key: o for o in OUTPUTS}

DIAGNOSTICS_TOPIC = '/diagnostics'
"""The node's counters and stage times (``diagnostic_msgs/DiagnosticArray``), not per frame."""


def image_encoding(key: str, value: np.ndarray) -> str:
    """The ``sensor_msgs/Image`` encoding of image output ``key`` holding ``value``: the table's,
    or ``16UC1`` for uint16 millimetres and ``32FC1`` for float metres."""
    fixed = OUTPUTS_BY_KEY[key].encoding
    if fixed:
        return fixed
    return '16UC1' if value.dtype == np.uint16 else '32FC1'


class MessageFactory(Protocol):
    """Builds messages of one message library (rclpy's classes, or ``rosbags``' types)."""

    def image(self, array: np.ndarray, encoding: str, header: Any) -> Any: ...

    def camera_info(self, intr: Any, header: Any) -> Any: ...

    def cloud(self, packed: Any, header: Any) -> Any: ...

    def status(self, fields: dict[str, Any]) -> Any: ...


def build_message(factory: MessageFactory, key: str, value: Any, header: Any,
                  node_name: str, camera: str = '') -> Any:
    """The message of output ``key`` for the pipeline's ``value``, stamped with ``header`` (the
    input image's, unchanged). ``node_name`` and ``camera`` name a ``status`` message."""
    fill = OUTPUTS_BY_KEY[key].fill
    if fill == 'image':
        return factory.image(value, image_encoding(key, value), header)
    if fill == 'camera_info':
        return factory.camera_info(value, header)
    if fill == 'cloud':
        return factory.cloud(value, header)
    return factory.status(alignment_status(value, node_name, camera))


def alignment_status(report: Any, node_name: str, camera: str = '') -> dict[str, Any]:
    """The ``diagnostic_msgs/DiagnosticStatus`` fields of ``depth/alignment`` for an
    :class:`~depth_node.frame_pipeline.AlignmentReport` (LiDAR fit) or a
    :class:`depth_node.prompt.PromptReport`: ``level`` (int), ``name``, ``message`` (the
    state), ``hardware_id`` (the frame_id) and ``values`` (a dict), every message string bounded
    for logs and diagnostics."""
    values = report.values()
    values['reason'] = bounded(values['reason'])
    which = f' ({camera})' if camera else ''
    what = 'depth prompt' if isinstance(report, PromptReport) else 'lidar alignment'
    return {'level': report.level, 'name': f'{node_name}: {what}{which}',
            'message': values['state'], 'hardware_id': bounded(report.frame_id, 64),
            'values': values}


def output_topics(config: Any) -> list[Output]:
    """The outputs advertised with ``config`` (:class:`depth_node.config.NodeConfig`)."""
    return [o for o in OUTPUTS if o.exists(config)]
