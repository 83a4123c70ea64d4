"""An exported ONNX model run by onnxruntime on numpy arrays: no torch (the serving image has none).

Its kind (generator or encoder) and config (nz, image_size, channels) are read from the graph's input shape
and one probe, so an ONNX file needs nothing beside it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import brief


class OnnxNet:
    """An ONNX file, CPU, float32 in and out. threads: onnxruntime's intra-op threads (1: the calling thread)."""
    differentiable = False

    def __init__(self, path: Path | str, threads: int | None = None):
        # onnxruntime 1.29+ sends usage telemetry to Microsoft from Linux too (and warns when it cannot store a
        # device id); a model server should not call out. Off, unless ORT_DISABLE_TELEMETRY is already set.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - not ONNX, truncated, an unknown op
            raise ValueError(f"'{path}' is not an ONNX model ({brief(e)})") from None
        self.input = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        if len(shape) == 2:   # kind and sizes from the graph's input shape and one probe
            out = self(np.zeros((1, shape[1]), np.float32))
            self.kind, self.config = "generator", {"nz": shape[1], "channels": out.shape[1], "image_size": out.shape[2]}
        else:
            out = self(np.zeros((1, *shape[1:]), np.float32))
            self.kind, self.config = "encoder", {"nz": out.shape[1], "channels": shape[1], "image_size": shape[2]}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})[0])
