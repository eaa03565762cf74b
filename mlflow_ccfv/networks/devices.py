"""Where a network runs: the device choice shared by scoring, training and evaluation.

``device=None`` everywhere means CUDA when ``torch.cuda.is_available()``, else the CPU. Mixed
precision (``amp``) is an explicit opt-in for inference only: on CUDA it runs the network's forward
pass under ``torch.autocast`` in float16 (bfloat16 on the CPU); features are read back as float32.
It is off by default because its effect on CC-FV rankings has not been measured yet, and on the CPU
the default path is bit-for-bit the float32 one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mlflow_ccfv.errors import OptionError

__all__ = ["autocast_inference", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` (or ``""``/``"auto"``) = ``cuda`` if available, else ``cpu``.

    A CUDA device that this machine does not have is an :class:`~mlflow_ccfv.errors.OptionError`
    naming what is available, rather than a failure deep inside the first forward pass.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as exc:
        raise OptionError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:<index>'.") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(
                f"device {device!r}: this machine (or this torch build, {torch.__version__}) has no CUDA GPU; "
                "use device 'cpu', or install a CUDA build of torch (README, 'Installing')."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise OptionError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})."
            )
    elif resolved.type not in ("cpu", "mps", "xpu"):
        raise OptionError(f"device {device!r} is not supported; use 'cpu', 'cuda' or 'cuda:<index>'.")
    return resolved


@contextlib.contextmanager
def autocast_inference(device: torch.device, amp: bool = False) -> Iterator[None]:
    """``torch.autocast`` for an inference forward pass when ``amp`` (float16 on CUDA, bfloat16 elsewhere);
    a no-op otherwise, so the default path is unchanged."""
    if not amp:
        yield
        return
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
