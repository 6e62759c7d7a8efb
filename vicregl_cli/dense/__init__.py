"""Dense features measured without training: in-context retrieval (Hummingbird) and k-means of patch
features, scored by mIoU against segmentation masks. Plain-Python API: `DenseConfig` + `run_protocol`."""

from vicregl_cli.dense.protocol import DenseConfig, plan, run_point, run_protocol

__all__ = ["DenseConfig", "plan", "run_point", "run_protocol"]
