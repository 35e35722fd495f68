"""The node's parameters: one table, used to declare them, to validate them and to test the docs.

ROS-free: the node turns each :class:`ParamSpec` into a ``ParameterDescriptor``; the tests compare
this table with ``config/depth.yaml`` and ``launch/depth.launch.py``. Every check of a value lives
here, the same for startup (:func:`validate_values`) and for a change at run time
(:func:`validate_change`, :func:`check_each`); the nodes only wire them to rclpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
import re
from typing import Any, Optional, Sequence

from depth_node.hub import DEFAULT_MODEL

_CAMERA_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$')


class ConfigError(ValueError):
    """A parameter value the node cannot start or run with; the message says what to set."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default (its type is the parameter's type), constraints, docs."""

    name: str
    default: Any
    description: str
    read_only: bool = True
    choices: tuple = ()
    min: Optional[float] = None
    max: Optional[float] = None
    array_len: tuple = ()  # allowed lengths for a list parameter
    item_type: str = 'double'  # 'double', 'int' or 'string' for a list parameter
    accepts_bool: bool = False  # a string setting that also takes true / false (on / off)

    @property
    def type_name(self) -> str:
        if isinstance(self.default, bool):
            return 'bool'
        if isinstance(self.default, int):
            return 'int'
        if isinstance(self.default, float):
            return 'double'
        if isinstance(self.default, str):
            return 'string'
        return f'{self.item_type}_array'

    @property
    def constraints(self) -> str:
        """What :meth:`check` accepts beyond the type, in words ('' for anything): the
        parameter descriptor's ``additional_constraints``."""
        parts = []
        if self.choices:
            parts.append('one of: ' + ', '.join(map(str, self.choices)))
        if self.array_len:
            parts.append(f'{" or ".join(map(str, self.array_len))} values')
        if self.min is not None or self.max is not None:
            each = 'each ' if self.type_name.endswith('_array') else ''
            low = '' if self.min is None else self.min
            high = '' if self.max is None else self.max
            parts.append(f'{each}in range [{low}, {high}]')
        return '; '.join(parts)

    def coerce(self, value: Any) -> Any:
        """``value`` as this parameter takes it: an integer given for a double becomes a float
        (``ros2 param set ... 2`` sends an integer), a bool given to a string setting that
        :attr:`accepts_bool` becomes ``'on'`` / ``'off'``; anything else is returned as it is."""
        if self.type_name == 'double' and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if self.accepts_bool and isinstance(value, bool):
            return 'on' if value else 'off'
        return value

    def check(self, value: Any) -> Optional[str]:
        """Return why ``value`` is refused, or None when it is acceptable."""
        t = self.type_name
        if t == 'bool' and not isinstance(value, bool):
            return f'{self.name} must be a bool, got {value!r}'
        if t == 'int' and (isinstance(value, bool) or not isinstance(value, int)):
            return f'{self.name} must be an integer, got {value!r}'
        if t == 'double':
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f'{self.name} must be a number, got {value!r}'
            if not math.isfinite(value) and not (math.isinf(value) and value > 0):
                return f'{self.name} must be finite, got {value!r}'
        if t == 'string' and not isinstance(value, str):
            return f'{self.name} must be a string, got {value!r}'
        if t.endswith('_array'):
            if isinstance(value, (str, bytes)) or not hasattr(value, '__len__'):
                return f'{self.name} must be a list, got {value!r}'
            values = list(value)
            if t == 'string_array' and not all(isinstance(v, str) for v in values):
                return f'{self.name} must be a list of strings, got {value!r}'
            if t == 'int_array' and not all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in values):
                return f'{self.name} must be a list of integers, got {value!r}'
            if t == 'double_array':
                try:
                    values = [float(v) for v in values]
                except (TypeError, ValueError):
                    return f'{self.name} must be a list of numbers, got {value!r}'
                if not all(math.isfinite(v) for v in values):
                    return f'{self.name} must hold finite numbers, got {value!r}'
            if self.array_len and len(values) not in self.array_len:
                return (f'{self.name} must have {" or ".join(map(str, self.array_len))} '
                        f'values, got {len(values)}')
            if self.min is not None and any(v < self.min for v in values):
                return f'{self.name} values must be >= {self.min}, got {value!r}'
            return None
        if self.choices and value not in self.choices:
            return f'{self.name} must be one of {", ".join(map(str, self.choices))}; got {value!r}'
        if self.min is not None and value < self.min:
            return f'{self.name} must be >= {self.min}, got {value!r}'
        if self.max is not None and value > self.max:
            return f'{self.name} must be <= {self.max}, got {value!r}'
        return None


PARAMS: tuple[ParamSpec, ...] = (
    # model
    ParamSpec('model.name', DEFAULT_MODEL,
              'Hugging Face hub id or local directory of a transformers depth model '
              '(AutoModelForDepthEstimation), or a plain ONNX model (a .onnx file, or a '
              'directory with model.onnx) with its card depth_node_model.yaml. Relative vs '
              'metric is read from its config (or card).'),
    ParamSpec('model.engine', 'auto',
              "What runs the network: 'torch', 'onnxruntime', 'openvino', 'tensorrt' (CUDA), or "
              "'auto': OpenVINO on the CPU when installed (1.3-1.4x faster than torch at the "
              'same precision on AMX CPUs), else torch; torch on CUDA. ONNX engines export the '
              'model per input size into model.cache_dir (a model that does not export falls '
              "back to torch under 'auto'). 'triton': the network runs on a Triton Inference "
              'Server (depth_node-serve) at model.triton_url; alignment, confidence, clouds and '
              'publishing stay here (README "Serving a fleet from Triton").',
              choices=('auto', 'torch', 'onnxruntime', 'openvino', 'tensorrt', 'triton')),
    ParamSpec('model.device', 'auto', "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."),
    ParamSpec('model.triton_url', 'grpc://localhost:8001',
              "model.engine triton: the server, 'grpc://host:port' (Triton's gRPC port, 8001 by "
              "default) or 'http://host:port' (its HTTP port, 8000)."),
    ParamSpec('model.triton_model', 'depth',
              'model.engine triton: the model name on the server (depth_node-serve '
              '--model-name).'),
    ParamSpec('model.triton_timeout', 5.0,
              'model.engine triton: seconds a frame waits for its answer; a frame past it is '
              'dropped and counted (frames_server_down) and the node retries the server with '
              'backoff (0.5 s doubling to 8 s).', min=0.01, max=3600.0),
    ParamSpec('model.triton_wait', 30.0,
              'model.engine triton: seconds the startup waits for the server and its model to '
              'be ready (also the limit of the warm-up frames, which may make the server '
              'prepare a new input size) before it fails naming the URL.', min=0.0,
              max=3600.0),
    ParamSpec('model.precision', 'auto', "'auto' (on CUDA per model family: bf16 where the "
              'GPU has it (compute capability 8.0+), else fp16 for Depth Anything and Depth Pro, '
              'fp32 for DPT and GLPN; fp32 for ZoeDepth; on CPU bf16 when the CPU has native '
              "bf16 instructions, AVX512-BF16 or AMX-BF16, else fp32), 'fp32', 'fp16' (CUDA "
              "only), 'bf16' (on CPUs with AVX512-BF16 about 1.45x faster than fp32, more with "
              'AMX).',
              choices=('auto', 'fp32', 'fp16', 'bf16')),
    ParamSpec('model.input_size', 0,
              "Short side of the network input in pixels, a multiple of the model's patch size "
              '(518, 406, 308 for Depth Anything): smaller is faster and coarser. 0 = the '
              "model's own (518 for Depth Anything).", min=0, max=4096),
    ParamSpec('model.cache_dir', '',
              'Where ONNX exports and compiled engines are cached (shared by nodes, written '
              "atomically). Empty = $DEPTH_NODE_CACHE or ~/.cache/depth_node. Fill it ahead of "
              'time with depth_node-export.'),
    ParamSpec('model.threads', 0,
              'Intra-op threads of ONNX Runtime and OpenVINO (0 = all cores).', min=0, max=1024),
    ParamSpec('model.onnxruntime_providers', [],
              "ONNX Runtime execution providers in order, e.g. ['TensorrtExecutionProvider', "
              "'CUDAExecutionProvider', 'CPUExecutionProvider']; [] = CUDA then CPU on a CUDA "
              'device, else CPU.', item_type='string'),
    ParamSpec('model.openvino_device', 'CPU',
              "OpenVINO device: 'CPU', 'GPU' (Intel GPU), 'NPU', 'AUTO'."),
    ParamSpec('model.verify', True,
              'Engine self-check at startup: one seeded input through the engine and a '
              'reference (torch fp32; ONNX Runtime on the CPU for a plain ONNX model), per '
              'compiled input shape; beyond model.verify_tolerance the node refuses to start '
              'naming the engine, its version, the device and the fix (with model.precision '
              "auto a failing fp16 / bf16 engine runs in fp32 instead); a reference that cannot "
              'run (on the CPU either) refuses the start too. Costs one reference forward pass '
              'at the warm-up size (logged); an input size first seen later (another camera '
              'size) is checked at its first frame, and a failure there skips frames.'),
    ParamSpec('model.verify_tolerance', 0.0,
              'Largest mean relative error the self-check accepts; 0 = per precision (fp32 '
              '5e-3, fp16 3e-2, bf16 8e-2: README "Inference engines").', min=0.0, max=1.0),
    ParamSpec('model.kind', '',
              "What the model outputs, overriding its config: 'metric_depth' (metres along the "
              "optical axis), 'relative_disparity' (larger = nearer), 'relative_depth' (larger "
              "= farther). Empty = from the config (or ONNX card); a model type without a fast "
              "path whose config does not say needs it. DPT's KITTI/NYU checkpoints are metric "
              "but their config does not say so: set 'metric_depth'.",
              choices=('', 'relative_disparity', 'relative_depth', 'metric_depth')),
    ParamSpec('model.denoising_steps', 0,
              'Marigold only: denoising steps per frame (more = slower, finer). 0 = the '
              "checkpoint's recommendation.", min=0, max=1000),
    ParamSpec('model.ensemble_size', 0,
              'Marigold only: predictions averaged per frame (each costs the full denoising). '
              '0 = 1.', min=0, max=100),
    ParamSpec('model.random_init', '',
              "TEST ONLY: build this architecture with RANDOM weights instead of loading "
              "model.name ('depth-anything-v2-small', 'depth-anything-v2-base'). Output is "
              "meaningless; for pipeline smoke tests and timing. Empty = off."),
    ParamSpec('model.compile', False, 'torch.compile the model at startup (warm-up compiles, '
              'about 20 s on 2 CPU cores, again for each new input size: set '
              'model.warmup_size; on CPU Inductor with weight freezing, 5-13 % faster forward).'),
    ParamSpec('model.cuda_graphs', 'auto', "CUDA only: capture the forward pass in a CUDA "
              'graph per input size at warm-up (fixed camera size; at most 8 sizes, a size '
              "whose capture fails runs eagerly). 'auto': on for the torch engine on CUDA with "
              "torch >= 2.12 (its capture fix) unless model.compile is on, else off; 'on' "
              "(with model.compile: its 'reduce-overhead' mode); 'off' (true / false are read "
              'as on / off). Ignored on CPU.',
              choices=('auto', 'on', 'off'), accepts_bool=True),
    ParamSpec('model.keep_on_device', 'auto', 'Where the work after the forward pass runs '
              '(LiDAR projection and fit, flying pixels and confidence, the cloud): '
              "'auto': on the model's device when that is CUDA (one copy back per published "
              "message), else on the CPU; 'on': always where the model's output is (torch, "
              "also on the CPU); 'off': on the CPU (numpy).",
              choices=('auto', 'on', 'off'), accepts_bool=True),
    ParamSpec('model.warmup', True, 'Run two dummy frames at startup (batch 1 and the batch of '
              'all input.cameras; smaller batches are padded to those) so the first real frame '
              'is not slow.'),
    ParamSpec('model.warmup_size', [640, 480], 'Width and height of the warm-up frames: the '
              "camera's size, so compile and CUDA graphs are ready for its first frame.",
              item_type='int', array_len=(2,), min=1),
    # input
    ParamSpec('input.mode', 'image', "'image': run the network on camera images; "
              "'relative_depth': skip the network and align a prediction published by another "
              "node on 'relative_depth'.", choices=('image', 'relative_depth')),
    ParamSpec('input.cameras', [], 'Several cameras through one forward pass: for each name N '
              'the node subscribes N/image (or N/image/compressed, N/relative_depth) and '
              'N/camera_info and publishes N/depth/*; frames waiting at the same time share a '
              'batch. Unset (empty): one camera on image, camera_info and depth/*.',
              item_type='string'),
    ParamSpec('input.batch_wait', 0.0, 'With input.cameras: after the first frame of a batch '
              "arrives, wait up to this long (s) for the other cameras' frames (0 = batch only "
              'the frames already waiting).', min=0.0, max=1.0),
    ParamSpec('input.compressed', False, "Subscribe 'image/compressed' "
              '(sensor_msgs/CompressedImage, jpeg/png) instead of the raw image.'),
    ParamSpec('input.relative_kind', 'disparity', "In relative_depth mode: the incoming map is "
              "'disparity' (larger = nearer, affine-invariant inverse depth) or 'depth' "
              '(affine-invariant depth).', choices=('disparity', 'depth')),
    ParamSpec('input.max_pixels', 4_000_000, 'Largest image (width x height) processed; '
              'bigger images are downscaled or refused (input.oversize). 0 = no limit.',
              min=0),
    ParamSpec('input.oversize', 'downscale', "What to do with an image over input.max_pixels: "
              "'downscale' (outputs at the reduced size, camera_info scaled to match) or "
              "'refuse' (log and skip). Compressed images are checked from their header: a "
              "baseline JPEG is decoded at 1/2, 1/4 or 1/8 scale; PNG and progressive JPEG "
              'over the limit are refused.', choices=('downscale', 'refuse')),
    ParamSpec('input.max_aspect', 16.0, 'Largest aspect ratio (long side / short side) of an '
              'image sent to the network; a more extreme image, or one whose network input '
              "would be less than one patch on a side, is refused on arrival as bad input. "
              '0 = no limit.', min=0.0),
    # outputs
    ParamSpec('output.encoding', '32FC1', "depth/image encoding: '32FC1' metres, NaN invalid; "
              "'16UC1' millimetres, 0 invalid (REP 117/118).", choices=('32FC1', '16UC1')),
    ParamSpec('output.relative', True, 'Publish the raw prediction of a relative model on '
              'depth/relative (32FC1, relative inverse depth: larger is nearer, no unit).'),
    ParamSpec('cloud.enabled', True, 'Publish depth/points (metric depth and camera_info '
              'needed).', read_only=False),
    ParamSpec('cloud.stride', 2, 'Take every Nth pixel in both directions for the cloud.',
              read_only=False, min=1, max=32),
    ParamSpec('cloud.min_depth', 0.1, 'Cloud points nearer than this (metres) become NaN.',
              read_only=False, min=0.0),
    ParamSpec('cloud.max_depth', 80.0, 'Cloud points farther than this (metres) become NaN; '
              'also the far limit of LiDAR-aligned depth.', read_only=False, min=0.0),
    ParamSpec('cloud.organized', True, 'Organized cloud (height x width of the strided grid, '
              'is_dense false, NaN kept) or unorganized (finite points only).',
              read_only=False),
    ParamSpec('cloud.voxel_size', 0.0, 'Voxel grid for costmaps (metres; 0 = off): > 0 '
              'publishes one point per occupied voxel of the strided cloud, the centroid of '
              'its points (mean colour), an unorganized, NaN-free cloud (is_dense true); '
              'needs cloud.organized false.', read_only=False, min=0.0, max=10.0),
    ParamSpec('cloud.color', False, 'Add a packed rgb field from the camera image.',
              read_only=False),
    ParamSpec('cloud.min_confidence', 0.0, 'depth/points: points whose depth/confidence is '
              'below this become NaN (organized cloud) or are left out (unorganized); '
              '0 = off. Needs a confidence.* cue.', read_only=False, min=0.0, max=1.0),
    # depth quality: flying pixels, confidence, temporal stability
    ParamSpec('filter.edges', True, 'Flying pixels: metric depth on or next to a depth '
              'discontinuity (a jump of more than filter.edge_threshold to a 3x3 neighbour, '
              'relative to depth) becomes NaN in depth/image and depth/points. Relative '
              'output keeps every pixel (depth/confidence says where).', read_only=False),
    ParamSpec('filter.edge_threshold', 0.04, 'The flying-pixel jump: the spread of log depth '
              'in a 3x3 window (about the relative depth step). 0.04 removes 98 % of '
              'the pixels more than 10 % off near silhouettes and keeps 99.9 % of the correct '
              'ones away from them (bench/bench_quality.py).', read_only=False, min=0.005,
              max=2.0),
    ParamSpec('confidence.discontinuity', True, 'depth/confidence cue: low on and next to '
              'depth discontinuities (where the network smooths across silhouettes); '
              'scale-free.', read_only=False),
    ParamSpec('confidence.lidar', True, 'depth/confidence cue, with lidar.enabled: agreement '
              'of the fitted depth with the LiDAR points, spread over the image (neutral far '
              'from any point).', read_only=False),
    ParamSpec('confidence.temporal', True, "depth/confidence cue: agreement with the camera's "
              'previous output after removing the global change (low where the scene moved '
              'or the network flickers).', read_only=False),
    ParamSpec('confidence.model', True, "depth/confidence cue: the model's own confidence "
              'output, where it has one (Depth Anything 3 exports with depth_conf).',
              read_only=False),
    ParamSpec('temporal.enabled', False, 'Without LiDAR or a depth prompt: hold the '
              'per-frame scale (metric output; scale and shift for relative output) steady '
              'across frames, robustly fitted to the previous output and smoothed; a '
              'persistent change is followed within a few frames, a scene cut resets it.',
              read_only=False),
    ParamSpec('temporal.smoothing', 0.8, 'temporal.enabled: weight of the past in the '
              'smoothed scale (0 = no smoothing).', read_only=False, min=0.0, max=0.99),
    # LiDAR
    ParamSpec('lidar.enabled', False, "Make relative depth metric (or correct metric depth) "
              "with the LiDAR scans on 'lidar/points'."),
    ParamSpec('lidar.T_camera_lidar', [0.0],
              'Row-major 4x4 (16 values) mapping LiDAR points into the camera optical frame; '
              'with input.cameras, 16 values per camera in that order. '
              '[0.0] (unset) = look the transform up in tf2 at the image stamp.',
              read_only=False),
    ParamSpec('lidar.max_time_offset', 0.1, 'Largest |image stamp - scan stamp| (s) for a '
              'pair.', read_only=False, min=0.0),
    ParamSpec('lidar.max_fit_age', 1.0, 'Reuse the last good fit for frames without one while '
              'it is younger than this (s).', read_only=False, min=0.0),
    ParamSpec('lidar.fit', 'global', "'global' scale and shift, or 'local': global plus a "
              'smooth spatially varying correction.', read_only=False,
              choices=('global', 'local')),
    ParamSpec('lidar.fit_shift', True, 'Fit a shift as well as a scale (relative models). '
              'Metric models always get a scale-only correction.', read_only=False),
    ParamSpec('lidar.min_points', 50, 'Fewest inlier points for a fit.', read_only=False,
              min=3),
    ParamSpec('lidar.smoothing', 0.7, 'Temporal smoothing of scale and shift, 0 (none) to '
              '<1 (weight of the past).', read_only=False, min=0.0, max=0.99),
    ParamSpec('lidar.occlusion_window', 5, 'Pixel window of the occlusion (parallax) test; '
              '0 disables it.', read_only=False, min=0, max=31),
    ParamSpec('lidar.scan_buffer', 10, 'How many recent scans are kept for pairing by stamp.',
              min=1, max=100),
    # depth prompt (Prompt Depth Anything)
    ParamSpec('prompt.source', '', "Where a Prompt Depth Anything model's metric depth prompt "
              "comes from: 'depth_image' (an RGB-D camera's depth registered to the colour "
              "image on 'prompt_depth', 16UC1 millimetres or 32FC1 metres), 'lidar' (the "
              "scans on 'lidar/points' projected into the image; needs lidar.enabled), or '' "
              '(off: models that take no prompt). A frame without a usable prompt has no '
              'metric output.',
              choices=('', 'depth_image', 'lidar')),
    ParamSpec('prompt.max_time_offset', 0.1, 'Largest |image stamp - prompt stamp| (s) for a '
              'pair; a frame without a prompt that close has no metric output (counted).',
              read_only=False, min=0.0),
    ParamSpec('prompt.min_coverage', 0.05, 'Smallest fraction of valid cells of the prompt '
              'grid; a frame whose prompt covers less has no metric output (counted). Holes '
              'are filled before the network.', read_only=False, min=0.0, max=1.0),
    ParamSpec('prompt.max_side', 256, 'Long side of the prompt grid in pixels (its aspect is '
              "the image's; never more than the source's): an RGB-D depth image is averaged "
              'down to it, LiDAR points keep the nearest per cell. 256 = the 256x192 iPhone '
              'LiDAR depth the published models were trained with; smaller densifies a sparse '
              'LiDAR.', read_only=False, min=4, max=4096),
    ParamSpec('prompt.buffer', 5, 'How many recent prompt_depth images are kept for pairing by '
              'stamp.', min=1, max=100),
    # diagnostics
    ParamSpec('diagnostics.period', 1.0, 'Seconds between /diagnostics messages.', min=0.1),
)

PARAMS_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


@dataclass
class NodeConfig:
    """Validated parameter values, grouped as the node uses them."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def cameras(self) -> list[str]:
        """The camera names of ``input.cameras``; ``['']`` (one unnamed camera) when unset."""
        return list(self.values['input.cameras']) or ['']

    @property
    def T_camera_lidar(self) -> Optional[Sequence[float]]:
        """The 16 values of ``lidar.T_camera_lidar`` (the first camera's), or None for tf2."""
        return self.T_camera_lidar_for(0)

    def T_camera_lidar_for(self, index: int) -> Optional[Sequence[float]]:
        """The 16 values of camera ``index`` (its place in ``input.cameras``), or None for
        tf2."""
        value = list(self.values['lidar.T_camera_lidar'])
        return value[16 * index:16 * index + 16] if len(value) >= 16 else None


TF2_NOT_INSTALLED = 'tf2_ros is not importable here (every ROS 2 install has it)'
"""``no_tf2`` of a node where tf2_ros cannot be imported (the PyPI wheels)."""

TF2_NOT_STARTED = ('the node started with it set, so without a tf2 listener (restart the node '
                   'with it unset to use tf2)')
"""``no_tf2`` of a running node that has no tf2 listener although tf2_ros is importable."""


def check_each(values: dict[str, Any]) -> list[str]:
    """Why each value is refused by its own spec (unknown names ignored); the rules that
    involve several parameters wait for :func:`validate_values`. What the lifecycle node
    checks of a change while unconfigured."""
    return _checked(values)[1]


def validate_values(values: dict[str, Any], no_tf2: str = '') -> NodeConfig:
    """Check every value against its spec and the cross-parameter rules (:func:`cross_check`):
    the checks of startup, and (through :func:`validate_change`) of every change at run time.

    Parameters
    ----------
    values : dict
        Parameter name to value; parameters not given take their defaults.
    no_tf2 : str
        Empty when the node can look transforms up in tf2, else why it cannot
        (:data:`TF2_NOT_INSTALLED`, :data:`TF2_NOT_STARTED`): then LiDAR needs
        ``lidar.T_camera_lidar``.

    Raises
    ------
    ConfigError
        Naming every refused parameter and the reason.
    """
    accepted, errors = _checked(values)
    merged = {p.name: p.default for p in PARAMS}
    merged.update(accepted)
    errors.extend(cross_check(merged, no_tf2))
    if errors:
        raise ConfigError('; '.join(errors))
    return NodeConfig(merged)


def validate_change(config: NodeConfig, changes: dict[str, Any], no_tf2: str = '',
                    restart: str = 'startup: restart the node') -> NodeConfig:
    """A change to a running node's parameters (``ros2 param set``), checked as at startup.

    A restart parameter (``read_only`` in :data:`PARAMS`) is refused, saying how it takes
    effect (``restart``; on ``depth_node`` rclpy refuses them first, as they are declared
    read-only). Then the values after the change go through exactly the checks of startup,
    :func:`validate_values`, so a value is refused with the message it gets at startup.

    Returns
    -------
    NodeConfig
        The configuration after the change.

    Raises
    ------
    ConfigError
        Why the change is refused; the node keeps ``config``.
    """
    fixed = [name for name in changes if name in PARAMS_BY_NAME and
             PARAMS_BY_NAME[name].read_only]
    if fixed:
        raise ConfigError(f'{", ".join(fixed)} take(s) effect at {restart}')
    return validate_values({**config.values, **changes}, no_tf2)


def _checked(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The values their specs accept (coerced), and why the others are refused."""
    accepted, errors = {}, []
    for name, value in values.items():
        spec = PARAMS_BY_NAME.get(name)
        if spec is None:
            continue
        value = spec.coerce(value)
        reason = spec.check(value)
        if reason:
            errors.append(reason)
        else:
            accepted[name] = value
    return accepted, errors


TRITON_SCHEMES = ('grpc', 'http')
"""The protocols of ``model.triton_url``."""


def split_triton_url(url: str) -> tuple[str, str]:
    """``('grpc' | 'http', 'host:port')`` of a ``model.triton_url``.

    Raises
    ------
    ConfigError
        Anything but ``grpc://host:port`` or ``http://host:port`` (port 1-65535; a host name,
        IPv4 address or ``[IPv6]``), naming the parameter and the form it takes.
    """
    text = str(url).strip()
    scheme, sep, rest = text.partition('://')
    host, colon, port = rest.rpartition(':')
    if not (sep and scheme in TRITON_SCHEMES and colon and host and port.isdigit()
            and 0 < int(port) < 65536 and '/' not in rest and not any(c.isspace() for c in rest)):
        raise ConfigError(f"model.triton_url must be 'grpc://host:port' or 'http://host:port' "
                          f"(Triton's gRPC port 8001 or HTTP port 8000 by default); got {url!r}")
    return scheme, f'{host}:{int(port)}'


def cross_check(values: dict[str, Any], no_tf2: str = '') -> list[str]:
    """Rules that involve more than one parameter (``no_tf2``: see :func:`validate_values`)."""
    errors = []
    if values['cloud.max_depth'] <= values['cloud.min_depth']:
        errors.append('cloud.max_depth must be greater than cloud.min_depth')
    if values['cloud.voxel_size'] > 0 and values['cloud.organized']:
        errors.append('cloud.voxel_size > 0 publishes an unorganized cloud (one point per '
                      'voxel): set cloud.organized false, or cloud.voxel_size 0.0')
    cues = ('discontinuity', 'lidar', 'temporal', 'model')
    if values['cloud.min_confidence'] > 0 and not any(values[f'confidence.{c}'] for c in cues):
        errors.append('cloud.min_confidence gates depth/points by depth/confidence, but every '
                      'confidence.* cue is off: switch one on or set cloud.min_confidence 0')
    device = values['model.device']
    if not (device in ('auto', 'cpu', 'cuda') or
            (device.startswith('cuda:') and device[5:].isdigit())):
        errors.append(f"model.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    try:
        split_triton_url(values['model.triton_url'])
    except ConfigError as exc:
        errors.append(str(exc))
    cameras = list(values['input.cameras'])
    for name in cameras:
        if not _CAMERA_NAME.match(name):
            errors.append(f'input.cameras: {name!r} is not a valid ROS name (letters, digits, '
                          "'_' and '/' between parts, not starting with a digit)")
    if len(set(cameras)) != len(cameras):
        errors.append(f'input.cameras names must be unique, got {cameras}')
    n = max(1, len(cameras))
    T = [float(v) for v in values['lidar.T_camera_lidar']]
    if len(T) == 16 * n:
        for i in range(n):
            last_row = T[16 * i + 12:16 * i + 16]
            if any(abs(a - b) > 1e-6 for a, b in zip(last_row, (0.0, 0.0, 0.0, 1.0))):
                which = f' (camera {cameras[i]})' if cameras else ''
                errors.append(f'lidar.T_camera_lidar must be a rigid 4x4 transform{which} with '
                              'last row 0 0 0 1 (row-major)')
    elif T != [0.0]:
        need = '16 values' if n == 1 else f'16 values per camera ({16 * n} for {n} cameras)'
        errors.append(f'lidar.T_camera_lidar must hold {need}, or [0.0] for tf2; '
                      f'got {len(T)} values')
    elif values['lidar.enabled'] and no_tf2:
        errors.append(f'lidar.enabled is true but lidar.T_camera_lidar is unset and {no_tf2}: '
                      'set lidar.T_camera_lidar (16 values per camera, row-major, LiDAR to '
                      'camera optical frame)')
    source = values['prompt.source']
    if source == 'lidar' and not values['lidar.enabled']:
        errors.append("prompt.source 'lidar' needs lidar.enabled true (the node subscribes "
                      'lidar/points and projects the scans with lidar.T_camera_lidar or tf2)')
    if source and values['input.mode'] != 'image':
        errors.append(f"prompt.source '{source}' needs input.mode 'image': a depth prompt "
                      'goes into the network with the image')
    if values['input.mode'] == 'image' and not values['model.name'] and \
            not values['model.random_init']:
        errors.append('model.name is empty: set a hub id or a local model directory')
    return errors
