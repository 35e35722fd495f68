"""``depth_node-bag``: depth over a recorded ROS 2 bag, offline, every frame.

ROS-free: bags are read and written with ``rosbags`` (pure Python, both storage formats), so
no ROS install is needed; on a ROS 2 machine it works the same. Each frame goes through
:class:`depth_node.frame_pipeline.FramePipeline`, the node's own per-frame code, with the
node's parameters (the same YAML file, validated the same way).

Command line::

    depth_node-bag INPUT OUTPUT [--params-file FILE] [-p name:=value ...]
                   [--image-topic T] [--camera-info-topic T] [--lidar-topic T]
                   [--namespace NS] [--storage mcap|sqlite3] [--start S] [--duration D]
                   [--every N] [--no-copy] [--overwrite] [--colored] [--points]

Unlike the live node, nothing is dropped: every frame in the window is processed, in bag order.
A frame is paired with the camera_info of the latest stamp at or before its own and with the
LiDAR scan whose stamp is nearest (before or after it, within ``lidar.max_time_offset``): the
reader looks ahead in the bag for both. Each output message carries the input image's header and
is written at the input image's receive time (its bag timestamp), beside a copy of every input
topic (unless ``--no-copy``), so the output plays back as one recording. The LiDAR extrinsics
are ``lidar.T_camera_lidar``, or, when it is unset, the bag's ``/tf_static`` composed through the
frame tree (:class:`~depth_node.bag.extrinsics.Extrinsics`).

Three threads: the reader (reads, deserializes and decodes the next frames, pairs them), the
main thread (the forward pass and everything after it, as the node's worker) and the writer
(builds, serializes and writes messages); bounded queues between them.

Exit codes: 0 done; 1 the input could not be read to its end (what was processed before is in
OUTPUT, a valid bag) or the output could not be written; 2 a usage or configuration error
(nothing written); 3 the GPU became unusable (a sticky CUDA error; OUTPUT holds the frames
processed until then); 130 interrupted by SIGINT or SIGTERM (OUTPUT holds the frames processed
until then, a valid bag).

The package's modules: :mod:`~depth_node.bag.params` (the parameter file and ``-p``),
:mod:`~depth_node.bag.extrinsics` (``/tf_static``), :mod:`~depth_node.bag.io` (topics, the
reader and writer threads, message building), :mod:`~depth_node.bag.report` (progress and the
summary), :mod:`~depth_node.bag.cli` (the command line and the run); :mod:`.common` what they
share.
"""

from depth_node.bag.cli import build_parser, main, Options, parse_args, run
from depth_node.bag.common import (
    BagError, EXIT_GPU_LOST, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG)
from depth_node.bag.extrinsics import Extrinsics, TF_STATIC
from depth_node.bag.io import (
    CAMERA_INFO, COMPRESSED, FrameJob, IMAGE, MessageBuilder, output_topic, POINT_CLOUD,
    select_topics, Topics)
from depth_node.bag.params import node_config, parse_overrides, read_params_file

__all__ = ['BagError', 'build_parser', 'CAMERA_INFO', 'COMPRESSED', 'EXIT_GPU_LOST',
           'EXIT_INPUT', 'EXIT_INTERRUPTED', 'EXIT_OK', 'EXIT_USAGE', 'Extrinsics', 'FrameJob',
           'IMAGE', 'main', 'MessageBuilder', 'node_config', 'Options', 'output_topic',
           'parse_args', 'parse_overrides', 'POINT_CLOUD', 'PROG', 'read_params_file', 'run',
           'select_topics', 'TF_STATIC', 'Topics']
