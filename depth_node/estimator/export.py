"""ONNX export of a transformers depth model, per input shape, kept in an on-disk cache.

DINOv2-based models do not export with dynamic image sizes (the bicubic position-embedding
interpolation and Python ``int`` casts are traced as constants), so each network input shape
``(B, 3, h, w)`` is exported on its own, with static shapes, by the TorchScript exporter at
opset 17 (``torch.onnx.export(..., dynamo=False)``; ``../shared/notes/engines.md``).

Cache layout (``model.cache_dir``, default :func:`default_cache_dir`)::

    <cache_dir>/<key>/model.onnx      the exported network
    <cache_dir>/<key>/meta.json       what the key was made of, export time
    <cache_dir>/<key>/<engine>-...    engines' compiled artefacts (OpenVINO blobs, TensorRT
                                      plans), named by engine version, device, precision

``key`` is a SHA-256 over the model's files (their content), the input shape, the export dtype
and device kind, the opset and the torch, transformers and onnx versions. Every file is written
to a temporary name in the same folder and renamed into place (atomic on POSIX), so two nodes
starting together never read a half-written file; a corrupt entry is rebuilt with a warning.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
import hashlib
import json
import logging
import os
from pathlib import Path
import tempfile
import time
from typing import Callable, Optional
import warnings

import torch

from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.loading import Checkpoint

logger = logging.getLogger('depth_node.estimator')

OPSET = 17
INPUT_NAME = 'pixel_values'
OUTPUT_NAMES = ('predicted_depth', 'field_of_view')
_HASHES: dict[tuple, str] = {}   # (path, size, mtime_ns) -> sha256, per process


def default_cache_dir() -> Path:
    """``$DEPTH_NODE_CACHE``, else ``$XDG_CACHE_HOME/depth_node``, else ``~/.cache/depth_node``."""
    env = os.environ.get('DEPTH_NODE_CACHE')
    if env:
        return Path(env).expanduser()
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'depth_node'


def check_cache_dir(path: Path) -> None:
    """Refuse a ``model.cache_dir`` the ONNX engines cannot use: a file, a folder that cannot be
    created, or one that cannot be written (exports and compiled engines are written there,
    also for a plain ONNX model on TensorRT). The folder is created when missing.

    Raises
    ------
    EstimatorError
        Naming the folder, what is wrong and what to set instead.
    """
    fix = (f'point model.cache_dir at a folder this user can write (created when missing), '
           f'or leave it empty for {default_cache_dir()}; fill a shared cache ahead of time '
           'with depth_node-export')
    if path.exists() and not path.is_dir():
        raise EstimatorError(f"model.cache_dir '{path}' is a file, not a folder: {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EstimatorError(f"model.cache_dir '{path}' cannot be created "
                             f'({exc.strerror or exc}): {fix}') from exc
    try:
        fd, probe = tempfile.mkstemp(prefix='.write-probe.', suffix='.tmp', dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EstimatorError(f"model.cache_dir '{path}' is not writable "
                             f'({exc.strerror or exc}): the ONNX engines write exports and '
                             f'compiled engines there; {fix}') from exc


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content, remembered per (path, size, mtime) for the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _HASHES.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
        digest = _HASHES[key] = h.hexdigest()
    return digest


def model_identity(checkpoint: Checkpoint) -> str:
    """What identifies the weights: the digests of its files, or the random architecture's
    name (its weights are drawn with a fixed seed)."""
    if checkpoint.files:
        return ';'.join(f'{p.name}={file_digest(p)}' for p in checkpoint.files)
    if checkpoint.name.startswith('random-init:'):
        return checkpoint.name + ';seed=0'
    # Loaded, but its files are not known: key on the weights themselves.
    h = hashlib.sha256()
    for name, tensor in checkpoint.model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return 'state_dict=' + h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of what an export depends on."""
    import transformers
    try:
        import onnx
        onnx_version = onnx.__version__
    except ImportError:  # pragma: no cover - the export itself needs onnx
        onnx_version = 'missing'
    return {'torch': torch.__version__, 'transformers': transformers.__version__,
            'onnx': onnx_version, 'opset': str(OPSET)}


@dataclass(frozen=True)
class CacheEntry:
    """One folder of the cache: the exported ONNX file of one model at one input shape."""

    folder: Path
    key: str

    @property
    def onnx(self) -> Path:
        return self.folder / 'model.onnx'

    def artefact(self, name: str) -> Path:
        """Path of an engine's compiled file in this entry (e.g. ``tensorrt-fp16.plan``)."""
        return self.folder / name


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Network(torch.nn.Module):
    """The model as a function of ``pixel_values`` alone, returning its tensors."""

    def __init__(self, model: torch.nn.Module, with_fov: bool) -> None:
        super().__init__()
        self.model = model
        self.with_fov = with_fov

    def forward(self, pixel_values: torch.Tensor):  # noqa: D102
        out = self.model(pixel_values=pixel_values)
        if self.with_fov:
            return out.predicted_depth, out.field_of_view
        return out.predicted_depth


class OnnxExporter:
    """Exports one checkpoint to ONNX per input shape, through the cache.

    Parameters
    ----------
    checkpoint : Checkpoint
        The loaded model (fp32, CPU); it is moved and cast for the export and back.
    cache_dir : str or Path
        The cache root ('' = :func:`default_cache_dir`).
    dtype : torch.dtype
        Export dtype: float32 (CPU engines, TensorRT, which casts itself), or float16 for ONNX
        Runtime's CUDA provider (exported on the CUDA device).
    device : torch.device
        Where the export traces the model.
    """

    def __init__(self, checkpoint: Checkpoint, cache_dir: str | Path = '',
                 dtype: torch.dtype = torch.float32,
                 device: torch.device = torch.device('cpu')) -> None:
        self.checkpoint = checkpoint
        self.cache_dir = Path(cache_dir).expanduser() if str(cache_dir) else default_cache_dir()
        self.dtype = dtype
        self.device = device
        self.with_fov = checkpoint.model_type == 'depth_pro' and \
            getattr(checkpoint.model, 'fov_model', None) is not None
        self._identity: Optional[str] = None

    def key(self, shape: tuple[int, ...]) -> tuple[str, dict]:
        """The cache key of ``shape`` and what it was made of."""
        if self._identity is None:
            self._identity = model_identity(self.checkpoint)
        parts = {'model': self._identity, 'model_name': self.checkpoint.name,
                 'shape': list(shape), 'dtype': str(self.dtype).replace('torch.', ''),
                 'device': self.device.type, **versions()}
        text = json.dumps({k: v for k, v in parts.items() if k != 'model_name'},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32], parts

    def entry(self, shape: tuple[int, ...]) -> tuple[CacheEntry, Optional[float]]:
        """The cache entry for ``shape``, exported first when missing or unreadable.

        Returns the entry and the export time in seconds (None on a cache hit).
        """
        key, parts = self.key(shape)
        entry = CacheEntry(self.cache_dir / key, key)
        meta = entry.folder / 'meta.json'
        if entry.onnx.is_file() and meta.is_file():
            try:
                if json.loads(meta.read_text()).get('key') == key:
                    return entry, None
                logger.warning('cache entry %s belongs to another key; rebuilding it',
                               entry.folder)
            except (OSError, ValueError) as exc:
                logger.warning('cache entry %s is unreadable (%s); rebuilding it', entry.folder,
                               exc)
        return entry, self.export(entry, shape, parts)

    def export(self, entry: CacheEntry, shape: tuple[int, ...], parts: dict) -> float:
        """Export the model at ``shape`` into ``entry`` (atomically); return seconds taken."""
        try:
            import onnx  # noqa: F401 - torch.onnx.export needs it
        except ImportError as exc:
            raise EstimatorError(
                "exporting to ONNX needs the 'onnx' package: pip install 'depth_node[onnx]' "
                '(or use model.engine torch)') from exc
        model = self.checkpoint.model
        start = time.perf_counter()
        x = torch.zeros(shape, dtype=self.dtype, device=self.device)
        names = list(OUTPUT_NAMES[:2 if self.with_fov else 1])
        # the checkpoint's fp32 CPU model is shared (the self-check's reference, later fp32
        # exports): another precision or device is traced on a copy, never by casting it
        cast = self.dtype != torch.float32 or self.device.type != 'cpu'

        def write(tmp: Path) -> None:
            net = copy.deepcopy(model).to(device=self.device, dtype=self.dtype) if cast else model
            wrapper = _Network(net, self.with_fov)
            try:
                with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                    warnings.simplefilter('ignore')  # tracer and deprecation chatter
                    torch.onnx.export(wrapper, (x,), str(tmp), opset_version=OPSET,
                                      dynamo=False, input_names=[INPUT_NAME],
                                      output_names=names, do_constant_folding=True)
            except Exception as exc:  # noqa: BLE001 - any exporter failure is a config error
                raise EstimatorError(
                    f'{self.checkpoint.name} ({self.checkpoint.model_type}) does not export to '
                    f'ONNX at input {tuple(shape)}: {type(exc).__name__}: {exc}; use '
                    'model.engine torch for this model') from exc
            finally:
                del wrapper, net
                if cast and self.device.type == 'cuda':
                    torch.cuda.empty_cache()

        write_atomic(entry.onnx, write)
        seconds = time.perf_counter() - start
        meta = dict(parts, key=entry.key, export_seconds=round(seconds, 3),
                    created=time.strftime('%Y-%m-%dT%H:%M:%S'))
        write_atomic(entry.folder / 'meta.json',
                     lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
        logger.info('exported %s at input %s to %s in %.1f s', self.checkpoint.name,
                    tuple(shape), entry.onnx, seconds)
        return seconds

    def discard(self, entry: CacheEntry) -> None:
        """Remove an entry found corrupt (its next use exports again)."""
        for path in (entry.folder / 'meta.json', entry.onnx):
            try:
                path.unlink()
            except OSError:
                pass
