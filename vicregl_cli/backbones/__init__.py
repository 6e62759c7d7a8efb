"""The one backbone registry (spec, trunks, build) and weight files (read, load, save, WeightsRef)."""

from vicregl_cli.backbones.registry import BACKBONES, build_backbone, get_spec, parameter_count
from vicregl_cli.backbones.spec import BackboneSpec
from vicregl_cli.backbones.weights import (
    WeightsRef,
    load_backbone,
    read_backbone_state,
    resolve_weights,
    save_backbone,
    weights_sha256,
)

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "WeightsRef",
    "build_backbone",
    "get_spec",
    "load_backbone",
    "parameter_count",
    "read_backbone_state",
    "resolve_weights",
    "save_backbone",
    "weights_sha256",
]
