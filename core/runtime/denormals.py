"""Denormal floats (magnitudes below 1.2e-38) read and written as zero wherever a model runs. On
this CPU each operation on one takes a slow path, and an uploaded graph can make photos' values
denormal while the check's uniform input stays normal: `Relu(|x| - 1.01) * 1e-39` then three
convolutions, counted at 0.93 of Lite0's FLOPs and timed at 0.72 of its time by the check, took
69-91x Lite0's CPU time per image on photos (an attacker review). Flushed, a denormal costs what
any value does; a value that small changes no logit or map."""

from __future__ import annotations

import torch


def flush_denormals() -> None:
    """On this thread and every thread it starts from now on, which inherit its floating-point
    modes: called where a process starts, before its threads."""
    torch.set_flush_denormal(True)


def flush_denormals_in(options) -> None:  # an onnxruntime.SessionOptions
    """In an ONNX Runtime session's own threads. The first session a process makes also sets the
    mode of the thread that makes it, to this option: without it, off."""
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
