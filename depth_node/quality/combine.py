"""Combining the cues: :func:`normalize_model_confidence` maps a model's own confidence, in
any range, to ``[0, 1]``, and :func:`combine_confidence` takes the weighted geometric mean of
the enabled cues (NaN where the depth is invalid).
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np

from depth_node.quality.common import (
    ArrayOrNone, image, invalid, NAN, positive, QualityError)

__all__ = ['combine_confidence', 'normalize_model_confidence']

_MODEL_MODES = ('median', 'expp1', 'sigmoid', 'unit')


def normalize_model_confidence(conf, mode: str = 'median') -> np.ndarray:
    """A model's own confidence map, any range, to ``[0, 1]`` (1 = trust).

    Modes
    -----
    ``'median'`` (default; any non-negative range, unknown scale)
        ``c / (c + m)`` with ``m`` the median of the frame's finite positive values (on every
        4th pixel each way): 0.5 at the frame's median, scale-free, monotone. Per frame, so it
        ranks pixels within a frame; it cannot say a whole frame is bad.
    ``'expp1'`` (Depth Anything 3 ``depth_conf``, VGGT, DUSt3R: ``c = 1 + exp(l)``)
        ``1 - 1 / c`` = ``sigmoid(l)``, the logit's own probability; values ``< 1`` give 0.
    ``'sigmoid'`` (raw logits)
        ``1 / (1 + exp(-c))``.
    ``'unit'`` (already a probability)
        clipped to ``[0, 1]``.

    NaN stays NaN. Returns ``(H, W)`` float32.
    """
    if mode not in _MODEL_MODES:
        raise QualityError(f'model confidence mode must be one of {_MODEL_MODES}, got {mode!r}')
    c = image('model confidence', conf)
    if mode == 'median':
        sample = c[::4, ::4]
        with np.errstate(invalid='ignore'):
            sample = sample[(sample > 0) & (sample < np.inf)]
        m = np.float32(np.median(sample)) if sample.size else np.float32(1.0)
        with np.errstate(invalid='ignore'):
            out = np.maximum(c, 0)
        den = out + m
        with np.errstate(invalid='ignore', divide='ignore'):
            out /= den
        np.copyto(out, np.float32(1.0), where=np.isinf(c) & (c > 0))
        return out
    if mode == 'expp1':
        with np.errstate(divide='ignore', invalid='ignore'):
            out = np.maximum(c, 1)
            np.reciprocal(out, out=out)
        return np.subtract(1, out, out=out)
    if mode == 'sigmoid':
        with np.errstate(over='ignore'):
            out = np.negative(c)
            np.exp(out, out=out)
        out += 1
        return np.reciprocal(out, out=out)
    with np.errstate(invalid='ignore'):
        return np.clip(c, 0, 1)


def combine_confidence(cues: Mapping[str, Union[np.ndarray, None]], depth: ArrayOrNone = None,
                       weights: Optional[Mapping[str, float]] = None, model_key: str = 'model',
                       model_mode: str = 'median') -> np.ndarray:
    """One confidence from the enabled cues: their weighted geometric mean.

    ``exp(sum_i w_i log c_i / sum_i w_i)``. Why the geometric mean: it ranks pixels exactly as
    the product (an AND of independent cues: the same sparsification and AUSE), any cue near 0
    still vetoes the pixel, and unlike the product its scale does not sink as cues are added,
    so a downstream threshold (e.g. costmap gating at 0.5) keeps its meaning when a cue is
    switched on or off, and all cues at 0.5 give 0.5.

    Parameters
    ----------
    cues : dict
        name -> ``(H, W)`` array in ``[0, 1]`` (the functions of this module give that), or
        None for a disabled cue (skipped). The cue named ``model_key`` is the model's own
        confidence in any range, normalised by :func:`normalize_model_confidence` with
        ``model_mode``.
    depth : array, optional
        ``(H, W)`` depth; the result is NaN where it is invalid (NaN, inf, ``<= 0``). Any NaN
        in an enabled cue is NaN in the result too.
    weights : dict, optional
        name -> weight ``> 0`` (default 1 each); names not among the cues are an error.
    model_key, model_mode : str
        See ``cues``.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 in ``[0, 1]``; all ones (NaN where depth is invalid) when no cue is
        enabled.
    """
    if not isinstance(cues, Mapping):
        raise QualityError(f'cues must be a dict name -> array or None, got {type(cues)}')
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(cues))
    if unknown:
        raise QualityError(f'weights for cues that are not given: {unknown}')
    enabled = {}
    for name, cue in cues.items():
        if cue is None:
            continue
        a = image(f'cue {name!r}', cue)
        if name == model_key:
            a = normalize_model_confidence(a, model_mode)
        enabled[name] = (a, positive(f'weight of {name!r}', weights.get(name, 1.0)))
    d = image('depth', depth, allow_none=True)
    shapes = {a.shape for a, _ in enabled.values()} | ({d.shape} if d is not None else set())
    if len(shapes) > 1:
        raise QualityError(f'cues and depth must share one (H, W) shape, got {sorted(shapes)}')
    if not shapes:
        raise QualityError('no cue enabled and no depth: nothing to give a shape')
    shape = shapes.pop()
    if not enabled:
        out = np.ones(shape, dtype=np.float32)
    else:
        total = sum(w for _, w in enabled.values())
        equal = len({w for _, w in enabled.values()}) == 1
        out = None
        with np.errstate(divide='ignore', invalid='ignore'):
            for a, w in enabled.values():
                if equal:                   # the product, then one log: fewer passes
                    out = a.copy() if out is None else np.multiply(out, a, out=out)
                else:
                    term = np.log(a)
                    term *= np.float32(w / total)
                    out = term if out is None else np.add(out, term, out=out)
            if equal:
                if len(enabled) > 1:
                    np.log(out, out=out)
                    out *= np.float32(1.0 / len(enabled))
                    np.exp(out, out=out)
            else:
                np.exp(out, out=out)
    if d is not None:
        np.copyto(out, NAN, where=invalid(d))
    return out
