"""What ``launch/depth.launch.py`` makes of its arguments: ROS-free, so it is tested without
``launch`` installed.

The parameter file comes first; a launch argument that sets a parameter (``model``, ``device``,
``precision``) overrides it only when it is given: the default ``''`` means "as the parameter
file says" (and the node's own default where the file does not say either).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

ARGUMENTS: dict[str, tuple[str, str]] = {
    'params_file': ('', 'YAML parameter file (default: the package config/depth.yaml)'),
    'model': ('', 'model.name: hub id or local model directory (default: the params file)'),
    'device': ('', "model.device: 'auto', 'cpu', 'cuda' or 'cuda:N' (default: the params file)"),
    'precision': ('', "model.precision: 'auto', 'fp32', 'fp16' or 'bf16' (default: the params "
                  'file)'),
    'namespace': ('', 'namespace of the node and its relative topics'),
    'image': ('image', 'camera image topic (sensor_msgs/Image)'),
    'camera_info': ('camera_info', 'camera_info topic matching the image'),
    'lidar_points': ('lidar/points', 'LiDAR PointCloud2 topic (used when lidar.enabled)'),
    'use_fastdds_profile': ('true', 'use the shipped Fast DDS profile (large shared-memory '
                            'segment for multi-megabyte images)'),
    'lifecycle': ('false', 'start the managed node depth_node_lifecycle (configured and '
                  'activated by a lifecycle manager) instead of depth_node'),
    'autostart': ('false', 'with lifecycle:=true: configure and activate at start, as Nav2\'s '
                  'autostart'),
}
"""Launch argument -> (default, description)."""

PARAMETER_ARGUMENTS: dict[str, str] = {'model': 'model.name', 'device': 'model.device',
                                       'precision': 'model.precision'}
"""Launch argument -> the node parameter it overrides when given."""

NODE_EXECUTABLE = 'depth_node'
LIFECYCLE_EXECUTABLE = 'depth_node_lifecycle'

_TRUE = ('true', '1')
_FALSE = ('false', '0')


class LaunchArgumentError(ValueError):
    """A launch argument value the launch file cannot use; the message says what to pass."""


def as_bool(name: str, value: str) -> bool:
    """A boolean launch argument as ``launch``'s ``IfCondition`` reads it (true/false/1/0)."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise LaunchArgumentError(f'{name}:={value!r}: pass true or false')


def parameter_overrides(given: Mapping[str, str]) -> dict[str, str]:
    """The node parameters set by the given launch arguments: only the non-empty ones.

    Parameters
    ----------
    given : mapping of str to str
        Launch argument values as launch resolved them (an argument not given has its
        default, ``''`` for the parameter arguments).
    """
    return {param: str(given[arg]).strip() for arg, param in PARAMETER_ARGUMENTS.items()
            if str(given.get(arg, '')).strip()}


@dataclass(frozen=True)
class NodePlan:
    """How to start the node: executable, its plain arguments, its parameters in order (the
    parameter file path first, then a dict of overrides, the later winning)."""

    executable: str
    arguments: list[str] = field(default_factory=list)
    parameters: list[Any] = field(default_factory=list)


def node_plan(given: Mapping[str, str], params_file: str) -> NodePlan:
    """The node to start for the launch arguments ``given``; ``params_file`` is the parameter
    file to load (the given ``params_file`` or the package's ``config/depth.yaml``).

    ``autostart`` applies to the managed node only (``depth_node`` always starts itself); a
    parent launch file (a Nav2 bringup) may pass it down for its own nodes.

    Raises
    ------
    LaunchArgumentError
        For ``lifecycle`` or ``autostart`` values that are not booleans.
    """
    lifecycle = as_bool('lifecycle', given.get('lifecycle', 'false'))
    autostart = lifecycle and as_bool('autostart', given.get('autostart', 'false'))
    parameters: list[Any] = [params_file]
    overrides = parameter_overrides(given)
    if overrides:
        parameters.append(overrides)
    return NodePlan(executable=LIFECYCLE_EXECUTABLE if lifecycle else NODE_EXECUTABLE,
                    arguments=['--autostart'] if autostart else [],
                    parameters=parameters)


def remappings(given: Mapping[str, str]) -> list[tuple[str, str]]:
    """The input topic remappings (``image/compressed`` follows ``image``)."""
    image = given.get('image', ARGUMENTS['image'][0])
    return [('image', image), ('image/compressed', f'{image}/compressed'),
            ('camera_info', given.get('camera_info', ARGUMENTS['camera_info'][0])),
            ('lidar/points', given.get('lidar_points', ARGUMENTS['lidar_points'][0]))]
