"""The engine self-check (``model.verify``): an engine proves itself before it serves.

After an engine is built or loaded (a cache hit included) and before its first frame, one
fixed, seeded input runs through it and through a reference, and the raw outputs (depth, and
Depth Pro's field of view or a card's sky and confidence) are compared:

==============================  ===========================================================
engine                          reference
==============================  ===========================================================
ONNX Runtime, OpenVINO,         torch fp32 over the same transformers model (an export of
TensorRT on an export of ours   ours), on the engine's device
the same on a plain ONNX model  ONNX Runtime's CPU provider over the same file (none where
                                the engine is that already, or ONNX Runtime is missing)
torch bf16 / fp16               torch fp32 over a copy of the weights taken before the cast
torch fp32                      none: it is the reference itself
==============================  ===========================================================

The error is the mean absolute difference over the reference's mean magnitude (its spread for
an output centred on zero, such as sky logits), per output; a non-finite value where the
reference is finite (fp16 overflow) fails at once. The tolerance is per precision
(:data:`TOLERANCES`, measured: README "Inference engines"). An ONNX engine is checked once per
input shape it compiles (each is its own compiled engine), torch once. A batch of B runs the
same image B times and each item is compared with the batch-1 reference, so the reference is
computed once per network input size. :class:`SelfChecks` makes the check of each engine a
model runs on, with its reference.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
import functools
import logging
import math
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from depth_node.estimator.engines import engine_available
from depth_node.estimator.engines.torch_engine import TorchEngine
from depth_node.estimator.errors import EstimatorError

logger = logging.getLogger('depth_node.estimator')

#: Largest mean relative error of an engine's raw output against its reference, per precision.
#: Measured on this project's CPU (AMD EPYC, AVX512-BF16, no AMX) on the self-check input at
#: 640x480's network size, V2-Small architecture (random weights) and the tiny test model of
#: every family: fp32 (OpenVINO, ONNX Runtime) 6e-8 to 1.9e-6; fp16 (torch, the head's last
#: layer fp32) 1.3e-4 to 2.5e-3 (V2-Small 8.6e-4); bf16 (torch, OpenVINO) 6.3e-4 to 2.6e-2
#: (V2-Small 5.6e-3; the tiny DPT's zero-centred output the worst). The fp32 bound leaves room
#: for TF32 on GPUs, which rounds matmul inputs to fp16's 10 bits. Another model's weights
#: measured 0.15 to 1.2; an output off by 1 % everywhere is 1e-2 (not caught in bf16).
TOLERANCES: dict[str, float] = {'fp32': 5e-3, 'fp16': 3e-2, 'bf16': 8e-2}

SEED = 0
"""Seed of the self-check image."""


def seeded_image(height: int, width: int, seed: int = SEED) -> np.ndarray:
    """A fixed ``(height, width, 3)`` uint8 RGB test scene: a vertical ramp (floor to sky),
    eight boxes of seeded sizes and colours, and seeded texture noise (not plain noise, on which
    a depth network's output is close to constant and proves little)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(200.0, 40.0, num=int(height), dtype=np.float32)[:, None, None]
    image = np.broadcast_to(ramp, (int(height), int(width), 3)).copy()
    image[..., 2] += 30.0
    for _ in range(8):
        h = int(rng.integers(max(1, height // 8), max(2, height // 2)))
        w = int(rng.integers(max(1, width // 8), max(2, width // 2)))
        top = int(rng.integers(0, max(1, height - h)))
        left = int(rng.integers(0, max(1, width - w)))
        image[top:top + h, left:left + w] = rng.uniform(0, 255, size=3)
    image += rng.normal(0.0, 12.0, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def seeded_input(recipe: Any, shape: tuple[int, ...], seed: int = SEED) -> torch.Tensor:
    """``(B, 3, h, w)`` float32 network input for ``shape``: :func:`seeded_image` at the
    network's size, rescaled and normalised as ``recipe`` says, the same image in every batch
    item."""
    batch, _, height, width = (int(s) for s in shape)
    x = seeded_image(height, width, seed).astype(np.float32)
    if recipe.do_rescale:
        x = x * np.float32(recipe.rescale_factor)
    if recipe.do_normalize:
        mean = np.asarray(recipe.image_mean, np.float32)
        x = (x - mean) / np.asarray(recipe.image_std, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    return x.expand(batch, -1, -1, -1).contiguous()


def output_error(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, str]:
    """``(error, problem)`` of ``got`` against ``ref`` (one batch item each, or the same shape).

    ``error`` is the mean absolute difference over the reference's scale (its mean magnitude,
    or its standard deviation where that is larger: an output centred on zero), over the
    pixels where the reference is finite. ``problem`` says why they cannot be compared (shape,
    non-finite values where the reference is finite; ``error`` is then infinite), else ''.
    """
    got = got.detach().float().cpu()
    ref = ref.detach().float().cpu()
    if tuple(got.shape) != tuple(ref.shape):
        return math.inf, f'shape {tuple(got.shape)} against {tuple(ref.shape)}'
    finite = torch.isfinite(ref)
    broken = int((finite & ~torch.isfinite(got)).sum())
    if broken:
        return math.inf, (f'{broken} non-finite values where the reference is finite '
                          '(overflow in a reduced precision?)')
    if not bool(finite.any()):
        return math.inf, 'the reference has no finite value to compare with'
    reference = ref[finite]
    spread = float(reference.std()) if reference.numel() > 1 else 0.0
    scale = max(float(reference.abs().mean()), spread, 1e-12)
    return float((got[finite] - reference).abs().mean()) / scale, ''


def batch_error(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, str]:
    """The worst :func:`output_error` of each batch item of ``got`` against the batch-1
    ``ref`` (every item ran the same image)."""
    if got.ndim == 0 or ref.ndim == 0 or ref.shape[0] != 1:
        return output_error(got, ref)
    worst, problem = 0.0, ''
    for i in range(got.shape[0]):
        error, why = output_error(got[i:i + 1], ref)
        if why:
            return error, f'batch item {i}: {why}' if got.shape[0] > 1 else why
        worst = max(worst, error)
    return worst, problem


class ReferenceFailed(EstimatorError):
    """The self-check's reference could not run: not the engine's fault, so no fallback is
    tried; the startup is refused with the fix."""


class Reference:
    """What an engine is compared with: :meth:`run` gives the raw outputs by role."""

    #: One line: what it is, its version, precision and device.
    name: str = ''

    def run(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(1, 3, h, w)`` float32 -> ``{'depth': (1, h', w'), ...}`` on the CPU."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop what it holds once no further check needs it."""


class TorchReference(Reference):
    """torch fp32 over a transformers depth model (on the CPU), run on ``device``.

    ``owned``: the model is a copy made for the check (moved to ``device`` for good and dropped
    by :meth:`release`); else it is shared (the checkpoint an ONNX export is made of) and goes
    back to the CPU after each run.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, owned: bool,
                 with_fov: bool = True) -> None:
        self.model = model
        self.device = device
        self.owned = owned
        self.with_fov = with_fov
        self.name = f'torch {torch.__version__.split("+")[0]} fp32 ({device})'

    def run(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.model is None:
            raise EstimatorError('the self-check reference was already released')
        model = self.model
        moved = self.device.type != 'cpu'
        with torch.inference_mode():
            if moved:
                model.to(self.device)
            try:
                out = model(pixel_values=pixel_values.to(self.device, torch.float32))
                results = {'depth': out.predicted_depth.float().cpu()}
                fov = getattr(out, 'field_of_view', None) if self.with_fov else None
                if fov is not None:
                    results['fov'] = fov.float().cpu()
            finally:
                if moved and not self.owned:
                    model.to('cpu')
        return results

    def release(self) -> None:
        if self.owned:
            self.model = None
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()  # the reference's blocks, for the engines


class OnnxRuntimeReference(Reference):
    """ONNX Runtime's CPU provider over a plain ONNX model (the graph's own precision), its
    outputs picked by role as the card says."""

    def __init__(self, card: Any, ort: Any) -> None:
        self.card = card
        self._ort = ort
        self._session: Any = None
        self.name = f'onnxruntime {ort.__version__} {card.input_type} (CPU)'.replace(
            'float32', 'fp32').replace('float16', 'fp16')

    def run(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        from depth_node.estimator.engines.onnx_base import as_bhw

        if self._session is None:
            so = self._ort.SessionOptions()
            so.log_severity_level = 3
            self._session = self._ort.InferenceSession(str(self.card.path), so,
                                                       providers=['CPUExecutionProvider'])
        names = [o.name for o in self._session.get_outputs()]
        dtype = np.float16 if self.card.input_type == 'float16' else np.float32
        outs = self._session.run(names, {self.card.input_name:
                                         pixel_values.numpy().astype(dtype)})
        by_name = dict(zip(names, outs))
        return {role: as_bhw(torch.from_numpy(np.asarray(by_name[name])).float(), name,
                             self.card.path.name)
                for role, name in self.card.outputs.items()}

    def release(self) -> None:
        self._session = None


@dataclass
class CheckResult:
    """One self-check: the worst error over the outputs, and what it took."""

    shape: tuple[int, ...]
    error: float
    output: str
    tolerance: float
    seconds: float


def device_label(engine: Any) -> str:
    """Where ``engine`` runs, for messages: OpenVINO's device, a GPU's name, or 'CPU'."""
    ov_device = getattr(engine, 'ov_device', None)
    if ov_device:
        return f'OpenVINO {ov_device}'
    device = engine.device
    if device.type == 'cuda':
        try:
            return f'{device} ({torch.cuda.get_device_name(device)})'
        except Exception:  # noqa: BLE001 - a name is only for the message
            return str(device)
    return 'CPU'


def fix_hint(engine: Any, plain_onnx: bool) -> str:
    """What to change when ``engine``'s check fails: another precision, engine or version."""
    fixes = []
    if engine.precision != 'fp32':
        fixes.append("model.precision 'fp32'")
    if plain_onnx:
        others = [e for e in ('onnxruntime', 'openvino', 'tensorrt') if e != engine.name]
    else:
        others = ['torch'] if engine.name != 'torch' else []
    if others:
        fixes.append('another engine (' + ', '.join(f"model.engine '{e}'" for e in others)
                     + ')')
    version = getattr(engine, 'version', '')
    fixes.append(f'another {engine.name} version than {version}' if version
                 else f'another {engine.name} version')
    hint = '; '.join(fixes)
    if engine.name == 'tensorrt':
        hint += (' (TensorRT 10.3, as on JetPack 6.2, is reported to give wrong Depth Anything '
                 'output; 10.12 and later right: depth-anything-tensorrt#49)')
    return hint


class EngineCheck:
    """Runs the self-check of one engine (see the module docstring).

    Parameters
    ----------
    engine : Engine
        What is checked.
    run_engine : callable
        ``(B, 3, h, w)`` float32 -> the engine's raw outputs by role (``'depth'``, and
        ``'fov'``, ``'sky'``, ``'confidence'`` where it has them).
    reference : Reference or None
        None: nothing to compare with; ``why_none`` says why (one note, no failure).
    recipe : Recipe
        How the seeded image is normalised.
    tolerance : float
        0 = :data:`TOLERANCES` for the engine's precision.
    per_shape : bool
        Check each new input shape (ONNX engines: one compiled engine per shape), else once.
    plain_onnx : bool
        The model is a plain ONNX file (for the fix hint).
    """

    def __init__(self, engine: Any, run_engine: Callable[[torch.Tensor], dict],
                 reference: Optional[Reference], recipe: Any, why_none: str = '',
                 tolerance: float = 0.0, per_shape: bool = True,
                 plain_onnx: bool = False) -> None:
        self.engine = engine
        self.run_engine = run_engine
        self.reference = reference
        self.why_none = why_none
        self.recipe = recipe
        self.tolerance = float(tolerance) or TOLERANCES.get(engine.precision, TOLERANCES['fp32'])
        self.per_shape = per_shape
        self.plain_onnx = plain_onnx
        self.checked: set[tuple[int, ...]] = set()
        self.failed: dict[tuple[int, ...], str] = {}   # shape -> the error, raised again
        self.results: list[CheckResult] = []
        self._references: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._said_none = False

    def needed(self, shape: tuple[int, ...]) -> bool:
        """Whether ``shape`` ``(B, 3, h, w)`` has not been checked yet (or failed)."""
        if tuple(shape) in self.failed:
            return True
        if self.reference is None:
            return not self._said_none
        if self.per_shape:
            return tuple(shape) not in self.checked
        return not self.checked

    def _reference_outputs(self, single: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference's outputs for ``single``; a reference that fails on a GPU (out of
        memory next to the engine, as on an 8 GB Jetson) is run again on the CPU.

        Raises
        ------
        ReferenceFailed
            When it fails on the CPU too: an engine that cannot be checked does not serve.
        """
        try:
            return self.reference.run(single)
        except Exception as exc:  # noqa: BLE001 - retried on the CPU, else refused
            failure = exc
            device = getattr(self.reference, 'device', None)
            if device is not None and device.type != 'cpu':
                torch.cuda.empty_cache()
                self.reference.device = torch.device('cpu')
                try:
                    return self.reference.run(single)
                except Exception as again:  # noqa: BLE001 - refused below
                    failure = again
        raise ReferenceFailed(
            f'the self-check of {self.engine.describe()} could not run its reference '
            f'{self.reference_name}: {type(failure).__name__}: {str(failure)[:300]}; fix that, '
            'or start without the check (model.verify false)') from failure

    def check(self, shape: tuple[int, ...]) -> Optional[str]:
        """Check the engine at ``shape`` when :meth:`needed`; returns the startup-log line
        (None when nothing was due).

        Raises
        ------
        EstimatorError
            The engine's output is beyond the tolerance (or not finite, or of another shape):
            the message names the engine, its version, the device, the error and the fix. A
            shape that failed raises the same error again without a second check.
        """
        shape = tuple(int(s) for s in shape)
        if shape in self.failed:
            raise EstimatorError(self.failed[shape])
        if not self.needed(shape):
            return None
        if self.reference is None:
            self._said_none = True
            return f'self-check of {self.engine.describe()}: none ({self.why_none})'
        start = time.perf_counter()
        key = shape[2:]
        single = seeded_input(self.recipe, (1,) + shape[1:])
        ref = self._references.get(key)
        if ref is None:
            ref = self._references[key] = self._reference_outputs(single)
        x = single.expand(shape[0], -1, -1, -1) if shape[0] > 1 else single
        got = self.run_engine(x.contiguous())
        worst, worst_output = 0.0, 'depth'
        for role, want in ref.items():
            have = got.get(role)
            if have is None:
                error, problem = math.inf, 'missing'
            else:
                error, problem = batch_error(have, want)
            if problem or error > worst:
                worst, worst_output = error, role
            if problem or error > self.tolerance:
                self._fail(shape, role, error, problem)
        seconds = time.perf_counter() - start
        self.checked.add(shape)
        self.results.append(CheckResult(shape, worst, worst_output, self.tolerance, seconds))
        if not self.per_shape:
            self.reference.release()
        return (f'self-check of {self.engine.describe()} against {self.reference_name} at '
                f'input {shape}: {worst_output} {worst:.1e} mean relative error (tolerance '
                f'{self.tolerance:.0e} for {self.engine.precision}), {seconds:.2f} s')

    @property
    def reference_name(self) -> str:
        return self.reference.name if self.reference is not None else 'none'

    @property
    def seconds(self) -> float:
        """Seconds spent checking so far."""
        return sum(r.seconds for r in self.results)

    def _fail(self, shape: tuple[int, ...], role: str, error: float, problem: str) -> None:
        engine = self.engine
        found = (f'its {role} output {problem}' if problem else
                 f'its {role} output is {error:.2e} mean relative error from the reference, '
                 f'over the {engine.precision} tolerance {self.tolerance:.0e}')
        what = engine.describe()
        version = getattr(engine, 'version', '') or '?'
        if version not in what:
            what += f' ({engine.name} {version})'
        if not getattr(engine, 'ov_device', None):  # OpenVINO's describe() names its device
            what += f' on {device_label(engine)}'
        message = (
            f'engine self-check failed: {what}, input {shape}, against '
            f'{self.reference_name}: {found}. It would publish wrong depth. '
            f'Fix: {fix_hint(engine, self.plain_onnx)}. (model.verify false skips this check; '
            'model.verify_tolerance sets the bound)')
        self.failed[shape] = message
        raise EstimatorError(message)

    def release(self) -> None:
        if self.reference is not None:
            self.reference.release()
        self._references.clear()


def engine_outputs(engine: Any, by_role: bool, pixel_values: torch.Tensor,
                   ) -> dict[str, torch.Tensor]:
    """``engine``'s raw outputs by role for the self-check, copied to the CPU in fp32
    (``by_role``: the engine of a plain ONNX model, whose card names its outputs)."""
    x = pixel_values.to(engine.device)
    if by_role:
        outputs = dict(engine.run_outputs(x))
    else:
        depth, fov = engine.run(x)
        outputs = {'depth': depth, 'fov': fov}
    return {role: t.detach().float().cpu() for role, t in outputs.items() if t is not None}


class SelfChecks:
    """The self-checks of the engines one model runs on: an :class:`EngineCheck` for each
    engine built, against the reference the module docstring gives it.

    Parameters
    ----------
    enabled : bool
        ``model.verify``; off, no engine is checked.
    tolerance : float
        0 = :data:`TOLERANCES` for the engine's precision.
    recipe : Recipe
        How the seeded image is normalised.
    card : OnnxModel or None
        A plain ONNX model's card.
    model : torch.nn.Module or None
        The transformers model (fp32, on the CPU) that ONNX engines run an export of: their
        reference.
    with_fov : bool
        Whether that export outputs Depth Pro's field of view.
    """

    def __init__(self, enabled: bool, tolerance: float = 0.0, recipe: Any = None,
                 card: Any = None, model: Optional[torch.nn.Module] = None,
                 with_fov: bool = False) -> None:
        self.enabled = enabled
        self.tolerance = tolerance
        self.recipe, self.card, self.model, self.with_fov = recipe, card, model, with_fov
        self.current: Optional[EngineCheck] = None   # the check of the engine in use
        self._all: list[EngineCheck] = []

    @property
    def seconds(self) -> float:
        """Seconds all the checks took so far."""
        return sum(check.seconds for check in self._all)

    def fp32_copy(self, model: torch.nn.Module, dtype: torch.dtype,
                  ) -> Optional[torch.nn.Module]:
        """A copy of the fp32 weights for the self-check of torch in fp16 / bf16 (``dtype``;
        the engine casts the model in place); None when none is needed."""
        if not self.enabled or dtype == torch.float32:
            return None
        return copy.deepcopy(model)

    def renew(self, engine: Any, fp32_copy: Optional[torch.nn.Module] = None) -> None:
        """The self-check of ``engine``, just made, in place of the current one (None with
        ``enabled`` off); ``fp32_copy``: the reference of torch in fp16 / bf16."""
        if self.current is not None:
            self.current.release()
        self.current = None
        if not self.enabled:
            return
        plain = self.card is not None
        reference: Optional[Reference] = None
        why = ''
        if isinstance(engine, TorchEngine):
            if engine.precision == 'fp32':
                why = 'torch fp32 is the reference itself'
            elif fp32_copy is None:
                why = 'no fp32 copy of the weights was kept'
            else:
                reference = TorchReference(fp32_copy, engine.device, owned=True)
        elif plain:
            if engine.name == 'onnxruntime' and engine.device.type == 'cpu':
                why = 'ONNX Runtime on the CPU is the reference itself'
            elif not engine_available('onnxruntime'):
                why = ("no reference: ONNX Runtime is not installed (pip install "
                       "'depth_node[onnxruntime]')")
            else:
                from depth_node.estimator.engines.onnxruntime_engine import import_onnxruntime

                reference = OnnxRuntimeReference(self.card, import_onnxruntime())
        else:
            reference = TorchReference(self.model, engine.device, owned=False,
                                       with_fov=self.with_fov)
        self.current = EngineCheck(engine, functools.partial(engine_outputs, engine, plain),
                                   reference, self.recipe, why_none=why,
                                   tolerance=self.tolerance,
                                   per_shape=not isinstance(engine, TorchEngine),
                                   plain_onnx=plain)
        self._all.append(self.current)

    def take_fp32_copy(self) -> Optional[torch.nn.Module]:
        """The fp32 copy of the weights kept as the current check's reference, handed over
        (to run the model in fp32 after a failed check; the reference holds it no more); None
        when there is none."""
        reference = self.current.reference if self.current is not None else None
        if not (isinstance(reference, TorchReference) and reference.owned):
            return None
        model, reference.model = reference.model, None
        return model

    def release(self) -> None:
        """Drop what the current check holds."""
        if self.current is not None:
            self.current.release()
