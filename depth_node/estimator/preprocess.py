"""Preprocessing: uint8 RGB frames -> the network input the model's image processor makes.

Engine-agnostic and ROS-free: :class:`Preprocessor` reads only the :class:`~depth_node.
estimator.recipe.Recipe`, the device the input must be on and the dtype the engine takes.

Tolerance against the model's own (PIL-backed) image processor, by ``backend``:

* ``'pil'`` (the default on CPU in fp32): the uint8 image is resized with PIL exactly as the
  processor does, then normalised through a 256-entry lookup table built with the processor's
  own arithmetic, so ``pixel_values`` are bit-identical.
* ``'torch_uint8'`` (the default on CPU in bf16): torch's SIMD antialiased uint8 resize
  (``interpolate`` on a channels-last uint8 tensor, the kernel torchvision uses), then the same
  table. Measured on the real frames against PIL: Depth Anything and DPT (bicubic) at most 2
  grey levels off on at most 0.5 % of values; GLPN (bilinear, a slight downscale to a multiple
  of 32) at most 1 level, on up to 13 % of values of one KITTI frame. 4-5x faster than PIL on
  2 cores (640x480 -> 686x518: 1.0 ms against 4.9 ms). Depth Anything V2 Small's prediction
  moves by 0.04 % (mean relative) against 0.8 % for bf16 itself.
* ``'torch'`` (the default on CUDA): the uint8 frame is uploaded once and resized on the device
  with ``torch.nn.functional.interpolate`` in float (antialiased, separable, rounded to integers
  after each pass as PIL does), then normalised through the same table: at most 2 grey levels
  off on at most 0.04 % of pixels against PIL on the real frames (measured on the CPU).

On the CPU the table is applied with NumPy, single-threaded (``np.take`` per channel plane, two
pixels per lookup through a 65536-entry table of value pairs, written straight into the layout
the network reads). In bf16 the table holds the float32 values rounded once, so the network
input is exactly the float32 ``pixel_values`` cast.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.recipe import (TORCH_MODES, Recipe, centre_pad, input_size,
                                         letterbox_pad, normalisation_table, resized_size,
                                         zoe_pad)

logger = logging.getLogger('depth_node.estimator')

BACKENDS = ('auto', 'pil', 'torch_uint8', 'torch')
_MAX_SIZES = 64  # image sizes whose network input size is remembered


class Preprocessor:
    """Turns same-size ``(H, W, 3)`` uint8 RGB frames into ``pixel_values`` on one device.

    Parameters
    ----------
    recipe : Recipe
        What the model's image processor does.
    device : torch.device
        Where the network input must be (the engine's input device).
    dtype : torch.dtype
        The dtype :meth:`run` gives with ``compute=True`` (the engine's input dtype).
    backend : str
        ``'pil'``, ``'torch_uint8'`` (CPU only) or ``'torch'`` (see the module docstring);
        ``'auto'``: ``'torch'`` on CUDA, else ``'pil'`` when ``exact`` and ``'torch_uint8'``.
    channels_last : bool
        Lay the input out channels-last in memory (what a channels-last network reads).
    exact : bool
        With ``backend='auto'`` on the CPU: bit-exact PIL resizing (fp32 runs) rather than the
        4-5x faster torch uint8 kernel (reduced-precision runs, where exactness buys nothing).
    name : str
        The model's name, for error messages.
    """

    def __init__(self, recipe: Recipe, device: torch.device, dtype: torch.dtype,
                 backend: str = 'auto', channels_last: bool = False, exact: bool = True,
                 name: str = 'the model') -> None:
        cuda = device.type == 'cuda'
        if backend not in BACKENDS:
            raise EstimatorError(
                f"preprocess_backend '{backend}' is not understood; use "
                f"{', '.join(repr(b) for b in BACKENDS)}")
        if backend == 'torch_uint8' and cuda:
            raise EstimatorError("preprocess_backend 'torch_uint8' is a CPU kernel; use 'torch' "
                                 "(or 'auto') on CUDA")
        if backend == 'auto':
            backend = 'torch' if cuda else ('pil' if exact else 'torch_uint8')
        if recipe.family in ('zoedepth', 'depth_pro') and recipe.resample not in TORCH_MODES:
            raise EstimatorError(f'{recipe.family} preprocessing with resample='
                                 f'{recipe.resample} is not supported (bilinear or bicubic)')
        if backend in ('torch', 'torch_uint8') \
                and recipe.resample not in TORCH_MODES and recipe.family in ('dpt', 'glpn'):
            logger.warning('resample=%d has no torch equivalent; resizing with PIL on the CPU',
                           recipe.resample)
            backend = 'pil'
        self.recipe = recipe
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.channels_last = bool(channels_last)
        self.name = name
        self._table = torch.from_numpy(normalisation_table(recipe)).to(device)
        self._table_flat = self._table.reshape(-1)
        # The table in the input dtype: looking it up gives exactly the float32 values cast.
        self._table_compute = self._table_flat.to(dtype)
        self._table_offsets = torch.arange(3, dtype=torch.int32, device=device) * 256
        # dtype -> (3, 256) NumPy table and (3, 65536) pair table (CPU lookups)
        self._host_tables: dict[torch.dtype, tuple[np.ndarray, np.ndarray]] = {}
        self._staging: Optional[torch.Tensor] = None   # pinned upload buffer (CUDA)
        self._staging_done: Optional[Any] = None       # its last host-to-device copy (event)
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}
        # mean / std on the device once: a per-frame torch.tensor(..., device=cuda) is a
        # pageable host-to-device copy, which waits for the stream (a hidden synchronisation).
        mean = torch.tensor(recipe.image_mean, dtype=torch.float32)
        std = torch.tensor(recipe.image_std, dtype=torch.float32)
        self._mean, self._std = mean.view(1, 3, 1, 1).to(device), std.view(1, 3, 1, 1).to(device)
        scale = 1.0 / recipe.rescale_factor if recipe.rescale_factor else 1.0
        # Depth Pro's fused rescale + normalise: mean and std in 0..255 units.
        self._mean_255 = (mean * scale).view(1, 3, 1, 1).to(device)
        self._std_255 = (std * scale).view(1, 3, 1, 1).to(device)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input ``(height, width)`` in pixels for an image of ``height`` x ``width``
        (see :func:`depth_node.estimator.recipe.input_size`); cached per image size."""
        key = (int(height), int(width))
        size = self._sizes.get(key)
        if size is None:
            size = input_size(self.recipe, *key, name=self.name)
            if len(self._sizes) >= _MAX_SIZES:  # a camera has one size: keep a few, bounded
                self._sizes.pop(next(iter(self._sizes)))
            self._sizes[key] = size
        return size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Size after the resize step only (before a DPT centre pad or a letterbox pad)."""
        return resized_size(self.recipe, height, width)

    def check_images(self, images: Sequence[np.ndarray]) -> tuple[int, int]:
        if len(images) == 0:
            raise EstimatorError('predict_batch needs at least one image')
        shape = None
        for image in images:
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
                    or image.dtype != np.uint8:
                got = (f'{image.dtype} array of shape {image.shape}'
                       if isinstance(image, np.ndarray) else type(image).__name__)
                raise EstimatorError(f'expected an (H, W, 3) uint8 RGB array, got {got}; '
                                     'convert BGR/mono/16-bit images before predicting')
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise EstimatorError(f'predict_batch needs images of one size, got {shape} and '
                                     f'{image.shape}; predict them separately')
        return int(shape[0]), int(shape[1])

    def _upload(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 on the device (channels-last memory), one host-to-device copy.

        On CUDA the frames are copied into one pinned staging buffer (kept while the frame size
        stays the same) and uploaded from there asynchronously.
        """
        if self.device.type == 'cuda':
            return self._upload_cuda(images)
        batch = np.stack(images) if len(images) > 1 else images[0][None]
        with warnings.catch_warnings():
            # Frames decoded by PIL are read-only; the tensor is only ever read.
            warnings.simplefilter('ignore', UserWarning)
            tensor = torch.from_numpy(np.ascontiguousarray(batch))
        return tensor.permute(0, 3, 1, 2)

    def _upload_cuda(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        shape = (len(images),) + tuple(images[0].shape)
        staging = self._staging
        if staging is None or tuple(staging.shape) != shape:
            staging = self._staging = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        elif self._staging_done is not None:
            self._staging_done.synchronize()  # the last upload from it has finished
        host = staging.numpy()
        for i, image in enumerate(images):
            np.copyto(host[i], image)
        tensor = staging.to(self.device, non_blocking=True)
        self._staging_done = torch.cuda.Event()
        self._staging_done.record(torch.cuda.current_stream(self.device))
        return tensor.permute(0, 3, 1, 2)

    def _lookup(self, values: torch.Tensor, table: torch.Tensor,
                channels_last: Optional[bool] = None) -> torch.Tensor:
        """Rescale + normalise integer pixel values ``(B, 3, h, w)`` through a flat table.

        ``table`` is ``(3 * 256,)``, channel-major. The result has ``table``'s dtype; its memory
        is channels-last when ``channels_last`` (default: the memory format of ``values``).
        uint8 values on the CPU are looked up with NumPy, one plane per channel: single-threaded
        (no stall when another process holds a core, unlike torch's two-thread index kernels),
        no int32 index image, and written straight into the layout the network reads.
        """
        if channels_last is None:
            channels_last = values.stride(1) == 1 and values.shape[1] > 1
        if values.device.type == 'cpu' and values.dtype == torch.uint8:
            return self._lookup_host(values, table, channels_last)
        if values.stride(1) == 1 and values.shape[1] > 1:  # channels-last memory
            index = values.permute(0, 2, 3, 1).to(torch.int32) + self._table_offsets
            out = table.index_select(0, index.reshape(-1)).view(index.shape)
            return out.permute(0, 3, 1, 2)
        index = values.to(torch.int32) + self._table_offsets.view(1, 3, 1, 1)
        return table.index_select(0, index.reshape(-1)).view(index.shape)

    def _lookup_host(self, values: torch.Tensor, table: torch.Tensor,
                     channels_last: bool) -> torch.Tensor:
        """:meth:`_lookup` of CPU uint8 values: NumPy ``take`` of each channel plane.

        Contiguous planes are looked up two pixels at a time: their bytes read as uint16 index
        a 65536-entry table of value pairs (256 KiB per channel in bf16, 512 KiB in float32,
        built once), half the gathers and index conversions of one pixel at a time
        (1280x720 -> 924x518 in bf16: 1.0 ms against 1.5 ms).
        """
        host, pairs = self._host_tables.get(table.dtype, (None, None))
        if host is None:
            # NumPy has no bf16: 16-bit tables are looked up as their raw int16 bits.
            raw = table.view(torch.int16) if table.element_size() == 2 else table
            host = raw.numpy().reshape(3, 256)
            # pairs[c, i]: the values of the two bytes of uint16 i, in memory order (any
            # byte order), as one 2 x itemsize unsigned integer.
            first_second = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(65536, 2)
            pair_type = np.dtype(f'u{2 * host.itemsize}')
            pairs = np.stack([np.ascontiguousarray(host[c][first_second]).view(pair_type)[:, 0]
                              for c in range(3)])
            self._host_tables[table.dtype] = host, pairs
        pixels = values.numpy()  # (B, 3, h, w), any strides, no copy
        batch, channels, height, width = pixels.shape
        paired = height * width % 2 == 0
        if channels_last:
            out = np.empty((batch, height, width, channels), dtype=host.dtype)
            plane_out = np.empty((height, width), dtype=host.dtype)
        else:
            out = np.empty((batch, channels, height, width), dtype=host.dtype)
        for b in range(batch):
            for c in range(channels):
                plane = pixels[b, c]
                dest = plane_out if channels_last else out[b, c]
                # mode='clip' (never clips here) writes into ``dest`` without the temporary
                # copy that the default mode='raise' makes.
                if paired and plane.flags.c_contiguous:
                    np.take(pairs[c], plane.reshape(-1).view(np.uint16),
                            out=dest.reshape(-1).view(pairs.dtype), mode='clip')
                else:
                    np.take(host[c], plane, out=dest, mode='clip')
                if channels_last:
                    out[b, :, :, c] = plane_out
        result = torch.from_numpy(out)
        if channels_last:
            result = result.permute(0, 3, 1, 2)
        return result.view(table.dtype) if result.dtype != table.dtype else result

    def _resize_uint8(self, images: Sequence[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """Resize like the processor's PIL step; returns integer-valued ``(B, 3, h, w)``."""
        recipe = self.recipe
        height, width = images[0].shape[:2]
        if not recipe.do_resize or size == (height, width):
            return self._upload(images)
        if self.backend == 'pil':
            from PIL import Image

            resized = [np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
                (size[1], size[0]), resample=recipe.resample)) for image in images]
            return self._upload(resized)
        mode = TORCH_MODES[recipe.resample]
        if self.backend == 'torch_uint8':
            # uint8 in, uint8 out: torch's vectorised antialiased kernel (channels-last input).
            return F.interpolate(self._upload(images), size=size, mode=mode, antialias=True,
                                 align_corners=False)
        x = self._upload(images).float()
        # PIL resamples horizontally, then vertically, rounding to uint8 after each pass.
        if size[1] != width:
            x = F.interpolate(x, size=(height, size[1]), mode=mode, antialias=True,
                              align_corners=False).round_().clamp_(0, 255)
        if size[0] != height:
            x = F.interpolate(x, size=size, mode=mode, antialias=True,
                              align_corners=False).round_().clamp_(0, 255)
        return x

    def _rescale(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 the way the processor rescales (float64 multiply, float32 cast)."""
        if not self.recipe.do_rescale:
            return x.float()
        return (x.double() * self.recipe.rescale_factor).float()

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        recipe = self.recipe
        if not recipe.do_normalize:
            return x
        return (x - self._mean) / self._std

    def run(self, images: Sequence[np.ndarray], compute: bool = False) -> torch.Tensor:
        """``pixel_values`` ``(B, 3, h, w)`` on the device, as the processor makes.

        float32, or with ``compute`` the compute dtype where the table gives it directly (DPT,
        Depth Anything, GLPN: the float32 values rounded once, no extra pass).
        """
        recipe = self.recipe
        height, width = images[0].shape[:2]
        if recipe.family in ('dpt', 'glpn'):
            table = self._table_compute if compute else self._table_flat
            x = self._lookup(self._resize_uint8(images, self.resized_size(height, width)),
                             table, channels_last=self.channels_last)
            if recipe.letterbox:
                # zeros after normalisation (the mean colour with ImageNet mean / std, black
                # for a graph that normalises inside itself: mean 0, std 1)
                top, bottom, left, right = letterbox_pad(recipe, height, width)
                x = F.pad(x, (left, right, top, bottom), value=0.0)
            elif recipe.family == 'dpt' and recipe.do_pad and recipe.size_divisor:
                top, bottom = centre_pad(x.shape[-2], recipe.size_divisor)
                left, right = centre_pad(x.shape[-1], recipe.size_divisor)
                x = F.pad(x, (left, right, top, bottom), value=0.0)
            return x
        x = self._upload(images)
        mode = TORCH_MODES[recipe.resample]
        if recipe.family == 'zoedepth':
            x = self._rescale(x)
            if recipe.do_pad:
                pad_h, pad_w = zoe_pad(height, width)
                x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode='reflect')
            if recipe.do_resize:
                x = F.interpolate(x, size=self.input_size(height, width), mode=mode,
                                  align_corners=True)
            return self._normalize(x)
        # depth_pro: fused rescale + normalise in float32, then resize without antialiasing.
        x = x.float()
        if recipe.do_rescale and recipe.do_normalize:
            x = (x - self._mean_255) / self._std_255
        elif recipe.do_rescale:
            x = self._rescale(x)
        elif recipe.do_normalize:
            x = self._normalize(x)
        if recipe.do_resize:
            x = F.interpolate(x, size=recipe.size, mode=mode, antialias=False,
                              align_corners=False)
        return x
