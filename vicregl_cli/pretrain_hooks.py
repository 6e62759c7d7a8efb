"""The command layer's wiring of pretraining: the online k-NN monitor (evaluate/monitor.py) handed to the
loop as a hook (pretrain/loop.py's Hooks), so that pretrain/ never imports evaluate/."""

from __future__ import annotations

from vicregl_cli.evaluate.monitor import open_monitor
from vicregl_cli.pretrain.config import PretrainConfig
from vicregl_cli.pretrain.loop import Hooks


def monitor_hooks(config: PretrainConfig) -> Hooks:
    """The hooks of a `vicregl pretrain` run: its k-NN monitor (--monitor-data, --monitor-every; views of the
    large crop size) when asked for. Opens and checks the monitor's datasets: a bad layout is a UserError."""
    monitor = open_monitor(
        config.monitor_data, config.monitor_every, config.crop_sizes[0], config.num_workers, config.seed
    )
    return Hooks(monitor=monitor)
