"""The node's parameters for ``depth_node-bag``: its YAML parameter file and ``-p`` overrides,
validated as the node validates them."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional, Sequence

from depth_node import config as cfg
from depth_node.bag.common import BagError, NODE_NAME, PROG
from depth_node.text import shorten


def _ignored(name: str) -> bool:
    """A parameter a node's file may set that means nothing offline (ignored, not refused)."""
    return name == 'use_sim_time' or name.startswith('qos_overrides.')


# ----------------------------------------------------------------------------- parameters
def read_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The parameters a ROS 2 parameter file gives node ``node_name``.

    Sections apply as rcl applies them: ``/**`` (or ``**``) first, then the node's own
    (``depth_node``, ``/depth_node`` or ``/<namespace>/depth_node``), a later value winning.
    Nested keys are joined with dots (``model: {name: x}`` is ``model.name``).

    Raises
    ------
    BagError
        When the file cannot be read or has no ``ros__parameters`` for the node.
    """
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BagError(f'--params-file {path}: cannot read it: {exc}') from exc
    if not isinstance(doc, dict):
        raise BagError(f'--params-file {path}: expected a mapping of node names to '
                       "'ros__parameters', as ros2 run ... --params-file takes")
    wildcard, own = [], []
    for key, section in doc.items():
        name = str(key)
        if name in ('/**', '**'):
            wildcard.append(section)
        elif name.lstrip('/') == node_name or name.endswith('/' + node_name):
            own.append(section)
    values: dict[str, Any] = {}
    for section in wildcard + own:
        params = section.get('ros__parameters') if isinstance(section, dict) else None
        if not isinstance(params, dict):
            raise BagError(f"--params-file {path}: a section has no 'ros__parameters' mapping")
        values.update(_flatten(params))
    if not wildcard and not own:
        raise BagError(f"--params-file {path}: no '{node_name}:' or '/**:' section (found "
                       f'{", ".join(shorten(str(k)) for k in doc) or "none"})')
    return values


def _flatten(params: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``-p name:=value`` arguments as a dict; values are read as YAML, as ``ros2 run`` does
    (``true``, ``2``, ``0.5``, ``[1.0, 2.0]``, else a string).

    Raises
    ------
    BagError
        For an item without ``:=``.
    """
    import yaml

    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition(':=')
        if not sep or not name:
            raise BagError(f'-p {shorten(item)}: write it as name:=value, e.g. '
                           '-p lidar.enabled:=true')
        try:
            values[name.strip()] = yaml.safe_load(text) if text.strip() else ''
        except yaml.YAMLError:
            values[name.strip()] = text
    return values


def add_parameter_arguments(parser: Any) -> None:
    """``--params-file FILE`` and ``-p name:=value`` (repeatable) on an ``argparse`` parser: the
    node's parameters as ``depth_node-bag`` and ``depth_node-serve`` take them (then
    :func:`node_config` of ``args.params_file``, ``args.params``)."""
    parser.add_argument('--params-file', metavar='FILE',
                        help="the node's YAML parameter file ('depth_node: ros__parameters:' "
                             "or '/**: ros__parameters:')")
    parser.add_argument('-p', dest='params', action='append', default=[],
                        metavar='name:=value', help='a parameter (after --params-file)')


def node_config(params_file: Optional[str], overrides: Sequence[str], prog: str = PROG,
                one_camera: bool = True) -> cfg.NodeConfig:
    """The node's parameters: its defaults, then ``params_file``, then ``-p`` overrides,
    validated as the node validates them. ``prog``: the tool the messages name (the bag tool,
    or ``depth_node-serve``); ``one_camera``: refuse ``input.cameras`` (the bag tool).

    Raises
    ------
    BagError
        For an unknown parameter (with the nearest known names) or an invalid value.
    """
    values = read_params_file(params_file) if params_file else {}
    values.update(parse_overrides(overrides))
    unknown = [n for n in values if n not in cfg.PARAMS_BY_NAME and not _ignored(n)]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, cfg.PARAMS_BY_NAME, n=2)
            hints.append(shorten(name) + (f' (did you mean {" or ".join(close)}?)' if close
                                          else ''))
        raise BagError(f'unknown parameter(s): {", ".join(hints)}; {prog} --help lists them')
    try:
        config = cfg.validate_values(values)
    except cfg.ConfigError as exc:
        raise BagError(f'configuration error: {exc}') from exc
    if one_camera and config['input.cameras']:
        raise BagError('input.cameras is set: depth_node-bag processes one camera per run; '
                       'run it once per camera with --image-topic (and --namespace)')
    return config
