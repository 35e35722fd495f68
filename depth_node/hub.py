"""Is the Hugging Face hub reachable? Asked once, in a few seconds, before a hub model loads.

ROS-free. Without this, transformers retries an unreachable hub for about 30 s before it gives
up. :func:`prepare_hub_access` asks the hub once with a short timeout (through the same proxies
``HTTPS_PROXY`` / ``NO_PROXY`` as every other client) and, when it cannot be reached, sets
``HF_HUB_OFFLINE=1`` for this process: the model then comes from the local cache or fails at
once with the estimator's message saying how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import threading
from typing import Optional
import urllib.error
import urllib.request

DEFAULT_ENDPOINT = 'https://huggingface.co'

DEFAULT_MODEL = 'depth-anything/Depth-Anything-V2-Small-hf'
"""The model loaded when none is named (``model.name``, the estimator, the demo and tools)."""

PROBE_TIMEOUT = 3.0
"""Seconds the probe waits for the hub (name lookup included)."""

_TRUE = ('1', 'true', 'yes', 'on')

_HUB_ID = re.compile(r'^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$')
"""What a hub id looks like (``org/name`` or ``name``); the estimator reads the same rule."""


def is_local_model(name: str) -> bool:
    """True when ``model.name`` means a local directory: it exists, or is no hub id."""
    name = str(name).strip()
    return Path(name).expanduser().exists() or not _HUB_ID.match(name)


def hub_endpoint() -> str:
    """The hub URL the Hugging Face libraries use (``HF_ENDPOINT``, else huggingface.co)."""
    return os.environ.get('HF_ENDPOINT', '').strip().rstrip('/') or DEFAULT_ENDPOINT


def offline_requested() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks not to contact the hub."""
    return any(os.environ.get(k, '').strip().lower() in _TRUE
               for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'))


def probe_hub(endpoint: Optional[str] = None,
              timeout: float = PROBE_TIMEOUT) -> Optional[str]:
    """Ask ``endpoint`` for its front page once; None when it answers, else why not.

    Any HTTP answer below 500 counts as reachable. Returns within about ``timeout`` seconds
    whatever the network does (a hanging name lookup included: the request runs on a daemon
    thread that is abandoned at the deadline).
    """
    url = endpoint or hub_endpoint()
    result: list[Optional[str]] = []

    def ask() -> None:
        request = urllib.request.Request(url, method='HEAD')
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                result.append(None)
        except urllib.error.HTTPError as exc:
            result.append(None if exc.code < 500 else f'HTTP {exc.code}')
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, 'reason', exc)
            result.append(f'{type(reason).__name__}: {reason}' if isinstance(
                reason, BaseException) else str(reason))

    thread = threading.Thread(target=ask, name='depth_node_hub_probe', daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not result:
        return f'no answer within {timeout:g} s'
    return result[0]


def prepare_hub_access(model_name: str, is_local: bool,
                       timeout: float = PROBE_TIMEOUT) -> Optional[str]:
    """Before loading hub model ``model_name``: probe the hub unless offline mode is already
    asked for or the model is a local directory; when the hub cannot be reached, set
    ``HF_HUB_OFFLINE=1`` in this process and return the one line to log, else None."""
    if is_local or offline_requested():
        return None
    endpoint = hub_endpoint()
    reason = probe_hub(endpoint, timeout)
    if reason is None:
        return None
    os.environ['HF_HUB_OFFLINE'] = '1'
    return (f'the Hugging Face hub ({endpoint}) cannot be reached ({reason}): loading '
            f"'{model_name}' from the local cache only (HF_HUB_OFFLINE=1 set for this process)")
