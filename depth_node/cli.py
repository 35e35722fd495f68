"""Command lines of the node executables: ``-h/--help`` and the plain (non-ROS) arguments.

ROS-free and cheap: usage is printed and a bad argument refused before rclpy, torch or the model
are loaded. ROS arguments (``--ros-args ... [--]``) are left to rcl.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Optional, Sequence

from depth_node import config as cfg
from depth_node.share import share_directory

ROS_ARGS = '--ros-args'
ROS_ARGS_END = '--'


def split_ros_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a command line (without the program name) into plain and ROS arguments.

    rcl's rule: each ``--ros-args`` starts ROS arguments, which run to the next ``--`` (dropped)
    or the end.

    Returns
    -------
    tuple of list of str
        ``(plain, ros)``; ``ros`` keeps its ``--ros-args`` markers.
    """
    plain: list[str] = []
    ros: list[str] = []
    in_ros = False
    for arg in args:
        if arg == ROS_ARGS:
            in_ros = True
            ros.append(arg)
        elif in_ros and arg == ROS_ARGS_END:
            in_ros = False
        elif in_ros:
            ros.append(arg)
        else:
            plain.append(arg)
    return plain, ros


def _ros_value(value: object) -> str:
    """A default as one writes it after ``-p name:=`` (an unset list: ``(unset)``)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value == []:
        return '(unset)'
    return repr(value)


def parameter_summary(width: int = 99) -> str:
    """The parameter table in short: one line per parameter (name, type, default, and whether
    it can change at run time)."""
    name_w = max(len(p.name) for p in cfg.PARAMS)
    lines = []
    for p in cfg.PARAMS:
        default = _ros_value(p.default)
        when = 'restart' if p.read_only else 'runtime'
        line = f'  {p.name:<{name_w}}  {p.type_name:<12} {when:<8} {default}'
        lines.append(line if len(line) <= width else line[:width - 3] + '...')
    return '\n'.join(lines)


def _docs_hint() -> str:
    share = share_directory()
    yaml_path = (f'{share}/config/depth.yaml' if share is not None
                 else 'config/depth.yaml in the package share directory')
    return textwrap.fill(
        f'Every parameter with its description: {yaml_path} (commented), or the README, '
        'sections "Parameters", "Subscribed topics" and "Published topics".', 99,
        break_long_words=False, break_on_hyphens=False)


def build_parser(prog: str, lifecycle: bool = False) -> argparse.ArgumentParser:
    """The parser of ``depth_node`` (``lifecycle=False``) or ``depth_node_lifecycle``."""
    if lifecycle:
        what = ('Managed (lifecycle) depth_node: same node name, parameters and topics as '
                'depth_node. configure loads and warms up the model and creates the publishers, '
                'activate subscribes and starts processing, deactivate pauses (frames arriving '
                'are dropped and counted), cleanup releases the model.')
    else:
        what = ('Camera image in; depth image, relative depth, camera_info and point cloud out '
                '(monocular depth network, optional LiDAR alignment).')
    epilog = (
        'ROS arguments follow --ros-args, e.g.\n'
        f'  {prog} --ros-args -r image:=/camera/image_raw -p model.name:=/models/da2s\n'
        f'  {prog} --ros-args --params-file my_depth.yaml\n\n'
        'Parameters (name, type, restart/runtime, default):\n'
        f'{parameter_summary()}\n\n{_docs_hint()}')
    parser = argparse.ArgumentParser(
        prog=prog, description=textwrap.fill(what, 99), epilog=epilog,
        usage=f'{prog} [-h]{" [--autostart]" if lifecycle else ""} [--ros-args ...]',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    if lifecycle:
        parser.add_argument('--autostart', action='store_true',
                            help='configure and activate right away (as Nav2\'s autostart), '
                                 'instead of waiting for a lifecycle manager')
    return parser


def parse_command_line(args: Sequence[str], prog: str,
                       lifecycle: bool = False) -> argparse.Namespace:
    """Parse the plain arguments of ``args`` (a command line without the program name).

    ``-h``/``--help`` prints usage and exits 0; an unknown plain argument prints usage and exits
    2 (``SystemExit``, from argparse). ROS arguments are not looked at.
    """
    plain, _ = split_ros_args(args)
    return build_parser(prog, lifecycle).parse_args(plain)


def command_line(args: Optional[Sequence[str]]) -> list[str]:
    """The arguments of ``args`` as ``rclpy.init`` takes them (``sys.argv`` when None: program
    name first), without the program name; a list starting with ``--ros-args`` has none."""
    import sys

    argv = list(sys.argv if args is None else args)
    return argv if argv[:1] == [ROS_ARGS] else argv[1:]
