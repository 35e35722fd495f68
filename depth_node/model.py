"""Load and warm up the model the ``model.*`` parameters name (ROS-free): the startup step
of the node, the bag tool and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Any, Callable, Optional, Sequence

from depth_node import config as cfg


@dataclass
class LoadedModel:
    """:func:`load_estimator`'s result: the estimator, log lines for the caller and timings."""

    estimator: Any
    notes: list[tuple[str, str]]  # (level 'info' | 'warning', text)
    timings: dict[str, float]


def load_estimator(config: cfg.NodeConfig, batches: Sequence[int] = (1,),
                   on_note: Optional[Callable[[str, str], None]] = None) -> LoadedModel:
    """Load and warm up the model the ``model.*`` parameters name.

    ``batches``: batch sizes to warm up (the node: 1 and its number of cameras).
    ``on_note(level, text)`` receives each log line as it arises (level ``'info'`` or
    ``'warning'``), so that a note made before a failure (the hub cannot be reached) is logged
    before the error; the lines are also returned in :attr:`LoadedModel.notes`.

    Raises
    ------
    depth_node.config.ConfigError
        When the model cannot be loaded, or its engine cannot be built, warmed up or fails its
        self-check (``model.verify``); the message says what to fix. An error that leaves the
        GPU unusable (:func:`depth_node.estimator.device.is_device_lost`) is raised as it is.
    """
    from depth_node.estimator import DepthEstimator, EstimatorError
    from depth_node.estimator.device import error_text, is_device_lost
    from depth_node.hub import is_local_model, prepare_hub_access

    c = config
    name = c['model.name']
    random_init = c['model.random_init'] or None
    notes: list[tuple[str, str]] = []

    def note_(level: str, text: str) -> None:
        notes.append((level, text))
        if on_note is not None:
            on_note(level, text)

    if c['model.engine'] == 'triton':  # the network runs on the server
        return _load_triton(c, batches, notes, note_)
    if not random_init:
        note = prepare_hub_access(name, is_local=is_local_model(name))
        if note:
            note_('warning', note)
    try:
        t0 = time.perf_counter()
        est = DepthEstimator(name, device=c['model.device'], precision=c['model.precision'],
                             random_init=random_init, compile=c['model.compile'],
                             cuda_graphs=c['model.cuda_graphs'], engine=c['model.engine'],
                             input_size=c['model.input_size'], cache_dir=c['model.cache_dir'],
                             threads=c['model.threads'],
                             providers=[p for p in c['model.onnxruntime_providers'] if p],
                             openvino_device=c['model.openvino_device'], kind=c['model.kind'],
                             denoising_steps=c['model.denoising_steps'],
                             ensemble_size=c['model.ensemble_size'],
                             verify=c['model.verify'],
                             verify_tolerance=c['model.verify_tolerance'])
        load_s = time.perf_counter() - t0
    except EstimatorError as exc:
        raise cfg.ConfigError(str(exc)) from exc
    if random_init:
        note_('warning', f'model.random_init={random_init}: RANDOM WEIGHTS, the output is '
                         'meaningless. Use this for pipeline smoke tests and timing only.')
    warm_s = 0.0
    try:
        if c['model.warmup']:
            width, height = c['model.warmup_size']
            # smaller batches are padded to one of the warmed sizes
            warm_s = est.warmup(height, width, batches=tuple(sorted(set(batches))))
        elif est.verifies:  # the engine is built and checked at startup all the same
            width, height = c['model.warmup_size']
            est.prepare(height, width)
    except Exception as exc:  # noqa: BLE001 - any engine error: one line, exit 2
        for note in est.startup_notes:
            note_('info', note)
        est.close()
        if is_device_lost(exc):
            raise
        what = str(exc) if isinstance(exc, EstimatorError) else \
            f'{type(exc).__name__}: {error_text(exc)}'
        raise cfg.ConfigError(f'{est.engine.describe()} failed at startup (warm-up at '
                              f"{c['model.warmup_size'][0]}x{c['model.warmup_size'][1]}): "
                              f'{what}') from exc
    for note in est.startup_notes:  # engine; export / cache times; self-check
        note_('info', note)
    verify_s = est.verify_seconds
    note_('info', f'model {random_init or name} on {est.device} ({est.dtype}), engine '
                  f'{est.engine.name}, {est.output_kind.replace("_", " ")}; load '
                  f'{load_s:.2f} s, warm-up {warm_s:.2f} s'
                  + ('' if not verify_s else f' (self-check {verify_s:.2f} s of it)'
                     if warm_s else f', self-check {verify_s:.2f} s'))
    return LoadedModel(est, notes, {'model_load': load_s, 'warmup': warm_s,
                                    'verify': verify_s})


def _load_triton(c: cfg.NodeConfig, batches: Sequence[int], notes: list[tuple[str, str]],
                 note: Callable[[str, str], None]) -> LoadedModel:
    """``model.engine: triton``: wait for the server's model, learn what it gives, warm it up
    (:class:`depth_node.estimator.engines.triton_engine.TritonEstimator`); ``note`` adds to
    ``notes`` and passes each line on."""
    from depth_node.estimator import EstimatorError
    from depth_node.estimator.engines.triton_engine import TritonEstimator

    t0 = time.perf_counter()
    try:
        est = TritonEstimator(c['model.triton_url'], c['model.triton_model'],
                              c['model.triton_timeout'], c['model.triton_wait'],
                              kind=c['model.kind'], on_note=note)
        load_s = time.perf_counter() - t0
        warm_s = 0.0
        if c['model.warmup']:
            width, height = c['model.warmup_size']
            warm_s = est.warmup(height, width, batches=tuple(sorted(set(batches))))
    except EstimatorError as exc:
        raise cfg.ConfigError(str(exc)) from exc
    note('info', f'model served by {est.url} ({est.output_kind.replace("_", " ")}); connect '
                 f'{load_s:.2f} s, warm-up {warm_s:.2f} s')
    return LoadedModel(est, notes, {'model_load': load_s, 'warmup': warm_s, 'verify': 0.0})
