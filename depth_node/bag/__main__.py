"""``python -m depth_node.bag``: the same as ``depth_node-bag``."""

import sys

from depth_node.bag.cli import main

sys.exit(main())
