"""Combining the cues: :func:`normalize_model_confidence` maps a model's own confidence, in
any range, to ``[0, 1]``, and :func:`combine_confidence` takes the weighted geometric mean of
the enabled cues (NaN where the depth is invalid).
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import math

import numpy as np

from depth_node.arrays import Array, astype, clip, full, is_tensor, namespace, nanmedian, \
    put_where
from depth_node.quality.common import ArrayOrNone, image, invalid, positive, QualityError

__all__ = ['combine_confidence', 'normalize_model_confidence']

_MODEL_MODES = ('median', 'expp1', 'sigmoid', 'unit')


def normalize_model_confidence(conf, mode: str = 'median', like: ArrayOrNone = None) -> Array:
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

    NaN stays NaN. Returns ``(H, W)`` float32 of ``conf``'s kind and device (numpy, or a tensor
    on any device), or of ``like``'s when given.
    """
    if mode not in _MODEL_MODES:
        raise QualityError(f'model confidence mode must be one of {_MODEL_MODES}, got {mode!r}')
    c = image('model confidence', conf, like=like)
    xp = namespace(c)
    if mode == 'median':
        sample = c[::4, ::4]
        with np.errstate(invalid='ignore'):
            sample = xp.where((sample > 0) & (sample < math.inf), sample, math.nan)
        m = xp.nan_to_num(nanmedian(sample), nan=1.0)    # 1 when none is finite and positive
        with np.errstate(invalid='ignore'):
            out = clip(c, 0, None)
        den = out + m
        with np.errstate(invalid='ignore', divide='ignore'):
            out /= den
        put_where(out, xp.isinf(c) & (c > 0), 1.0)
        return out
    if mode == 'expp1':
        with np.errstate(divide='ignore', invalid='ignore'):
            out = clip(c, 1, None)
            xp.reciprocal(out, out=out)
        xp.negative(out, out=out)       # 1 - 1 / c
        out += 1
        return out
    if mode == 'sigmoid':
        with np.errstate(over='ignore'):
            out = xp.negative(c)
            xp.exp(out, out=out)
        out += 1
        return xp.reciprocal(out, out=out)
    with np.errstate(invalid='ignore'):
        return clip(c, 0, 1)


def combine_confidence(cues: Mapping[str, Union[Array, None]], depth: ArrayOrNone = None,
                       weights: Optional[Mapping[str, float]] = None, model_key: str = 'model',
                       model_mode: str = 'median') -> Array:
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
        in an enabled cue is NaN in the result too. numpy or a tensor on any device: the cues
        are brought to its kind and device (without ``depth``: to the first tensor cue's, else
        numpy).
    weights : dict, optional
        name -> weight ``> 0`` (default 1 each); names not among the cues are an error.
    model_key, model_mode : str
        See ``cues``.

    Returns
    -------
    array
        ``(H, W)`` float32 in ``[0, 1]`` of ``depth``'s kind and device; all ones (NaN where
        depth is invalid) when no cue is enabled.
    """
    if not isinstance(cues, Mapping):
        raise QualityError(f'cues must be a dict name -> array or None, got {type(cues)}')
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(cues))
    if unknown:
        raise QualityError(f'weights for cues that are not given: {unknown}')
    like = depth if depth is not None else next(
        (c for c in cues.values() if is_tensor(c)), None)
    enabled = {}
    for name, cue in cues.items():
        if cue is None:
            continue
        a = image(f'cue {name!r}', cue, like=like)
        if name == model_key:
            a = normalize_model_confidence(a, model_mode)
        enabled[name] = (a, positive(f'weight of {name!r}', weights.get(name, 1.0)))
    d = image('depth', depth, allow_none=True)
    shapes = {tuple(a.shape) for a, _ in enabled.values()} | (
        {tuple(d.shape)} if d is not None else set())
    if len(shapes) > 1:
        raise QualityError(f'cues and depth must share one (H, W) shape, got {sorted(shapes)}')
    if not shapes:
        raise QualityError('no cue enabled and no depth: nothing to give a shape')
    shape = shapes.pop()
    if not enabled:
        out = full(shape, 1.0, np.float32, like=d)
    else:
        xp = namespace(next(iter(enabled.values()))[0])
        total = sum(w for _, w in enabled.values())
        equal = len({w for _, w in enabled.values()}) == 1
        out = None
        with np.errstate(divide='ignore', invalid='ignore'):
            for a, w in enabled.values():
                if equal:                   # the product, then one log: fewer passes
                    out = astype(a, np.float32, copy=True) if out is None else xp.multiply(
                        out, a, out=out)
                else:
                    term = xp.log(a)
                    term *= w / total
                    out = term if out is None else xp.add(out, term, out=out)
            if equal:
                if len(enabled) > 1:
                    xp.log(out, out=out)
                    out *= 1.0 / len(enabled)
                    xp.exp(out, out=out)
            else:
                xp.exp(out, out=out)
    if d is not None:
        put_where(out, invalid(d), math.nan)
    return out
