"""Where the package's installed files are: ``share/depth_node`` (launch, config, rviz, sample
frames, package.xml).

ROS-free. colcon (``install/depth_node/share/depth_node``), a wheel or ``pip install``
(``<prefix>/share/depth_node``, next to ``lib/python3.X/site-packages``) and the Debian layout
(``/opt/ros/<distro>/share/depth_node``) all put the share directory beside the ``lib`` folder
that holds this package; a source checkout has the same files at the repository root.
"""

from __future__ import annotations

from pathlib import Path
import sys
from typing import Optional

PACKAGE = 'depth_node'

_PACKAGE_DIR = Path(__file__).resolve().parent


def share_candidates() -> list[Path]:
    """Places that may hold the share directory, most specific first.

    1. ament's index (``AMENT_PREFIX_PATH``), where ``ament_index_python`` is importable;
    2. the install prefix of this very module: ``<prefix>/lib/python3.X/site-packages/depth_node``
       (or ``lib/python3/dist-packages``) gives ``<prefix>/share/depth_node``;
    3. the interpreter's prefix (``pip install`` of a wheel into a virtual environment);
    4. the source checkout this module runs from (``pip install -e``, ``PYTHONPATH``).
    """
    found: list[Path] = []
    try:
        from ament_index_python.packages import get_package_share_directory
        found.append(Path(get_package_share_directory(PACKAGE)))
    except (ImportError, LookupError, OSError, ValueError):
        pass  # not importable, AMENT_PREFIX_PATH unset, or the package is not in the index
    lib = next((p for p in _PACKAGE_DIR.parents if p.name == 'lib'), None)
    if lib is not None:
        found.append(lib.parent / 'share' / PACKAGE)
    found.append(Path(sys.prefix) / 'share' / PACKAGE)
    found.append(_PACKAGE_DIR.parent)  # a source checkout: launch/, config/ at the root
    return found


def share_directory() -> Optional[Path]:
    """The first candidate that holds ``config/depth.yaml``, or None."""
    for path in share_candidates():
        if (path / 'config' / 'depth.yaml').is_file():
            return path
    return None


def sample_data_directory() -> Optional[Path]:
    """The shipped sample frames (folders with ``camera.json``), or None when none are found.

    Installed under ``share/depth_node/sample_data``; in a source checkout ``sample_data/``.
    """
    for path in share_candidates():
        folder = path / 'sample_data'
        if any(folder.glob('*/camera.json')):
            return folder
    return None
