"""Every PretrainConfig field is settable as a generated flag and as KEY=VALUE; presets load by name; bad
keys and values are one clear error."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from typer.testing import CliRunner

from vicregl_cli import pretrain_hooks
from vicregl_cli.cli import app
from vicregl_cli.commands import pretrain as command
from vicregl_cli.errors import UserError
from vicregl_cli.pretrain import plan
from vicregl_cli.pretrain.config import PretrainConfig, load_config, parse_assignments
from vicregl_cli.pretrain.presets import preset_names

VALID = {  # fields whose checks need a particular non-default value; every other field gets a generic one
    "alpha": 0.5, "optimizer": "adamw", "precision": "fp16", "mlp": "64-32", "maps_mlp": "16-8",
    "num_matches": [3, 2], "crop_sizes": [64, 32], "crop_counts": [2, 4], "crop_min_scales": [0.3, 0.05],
    "crop_max_scales": [0.9, 0.3], "blur_probs": [0.5, 0.25], "solarize_probs": [0.1, 0.3],
    "epochs": 7, "warmup_epochs": 3, "colour_on": "workers",
}  # fmt: skip


def changed_value(spec: dataclasses.Field):
    """A valid value different from the field's default."""
    if spec.name in VALID:
        return VALID[spec.name]
    default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    kind = typing.get_type_hints(PretrainConfig)[spec.name]
    if kind is bool:
        return not default
    if kind in (int, float):
        return default + 3
    if typing.get_origin(kind) is list:
        return [item + 1 for item in default]
    return f"{spec.name}-value"


def as_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def flag_arguments(name: str, value) -> list[str]:
    dashed = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        on, _, off = command.BOOL_FLAGS.get(name, f"{dashed}/--no-{dashed[2:]}").partition("/")
        return [on if value else off]
    return [dashed, as_text(value)]


@pytest.fixture()
def captured(monkeypatch):
    """Run `vicregl pretrain --dry-run` up to the resolved config (no data, no model, no monitor datasets)."""
    seen = []
    monkeypatch.setattr(pretrain_hooks, "monitor_hooks", lambda settings: pretrain_hooks.Hooks())
    monkeypatch.setattr(plan, "dry_run", lambda settings, device=None: seen.append(settings) or {})
    monkeypatch.setattr(plan, "print_summary", lambda summary, settings: None)
    return seen


def test_every_field_is_settable_as_a_flag_and_as_key_value(captured):
    expected = {spec.name: changed_value(spec) for spec in dataclasses.fields(PretrainConfig)}
    defaults = dataclasses.asdict(PretrainConfig())
    assert all(expected[name] != defaults[name] for name in expected)
    flags = [argument for name, value in expected.items() for argument in flag_arguments(name, value)]
    pairs = [f"{name}={as_text(value)}" for name, value in expected.items()]
    for arguments in (flags, pairs):
        result = CliRunner().invoke(app, ["pretrain", *arguments, "--dry-run", "--device", "cpu"])
        assert result.exit_code == 0, result.output
    by_flags, by_pairs = (dataclasses.asdict(config) for config in captured)
    assert by_flags == by_pairs == expected


def test_a_packaged_preset_by_name_then_overrides(captured):
    result = CliRunner().invoke(app, ["pretrain", "--config", "demo", "cov_coeff=2.0", "epochs=5",
                                      "--batch-size", "16", "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert (config.cov_coeff, config.epochs, config.batch_size) == (2.0, 5, 16)
    assert config.backbone == "resnet10_small_w16" and config.crop_sizes == [32]  # the rest: the preset's
    assert load_config("demo.yaml", {}) == load_config("demo", {})
    assert {"demo", "resnet50_alpha0.75", "vicreg_resnet50"} <= set(preset_names())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["epochs=abc"], "epochs='abc': expected a value of type int; valid keys: data \\(str\\)"),
        (["epoch=3"], "unknown pretraining key 'epoch'.*valid keys: data \\(str\\)"),
        (["epochs"], "write overrides as KEY=VALUE"),
        (["--epochs", "3", "epochs=4"], "epochs given both as a flag and as KEY=VALUE"),
        (["--config", "no_such_preset"], "no packaged preset of that name; presets: .*demo"),
        (["--config", "configs/pretrain/demo.yaml"], "does not exist.*--config demo"),
    ],
)
def test_bad_overrides_are_one_clear_error(captured, arguments, message):
    with pytest.raises(UserError, match=message):
        CliRunner().invoke(app, ["pretrain", *arguments, "--dry-run"], catch_exceptions=False)
    assert captured == []


def test_assignments_read_dashes_as_underscores_and_keep_text():
    assert parse_assignments(["batch-size=8", "mlp=8-8", "data=/x=y"]) == {
        "batch_size": "8", "mlp": "8-8", "data": "/x=y"}  # fmt: skip


def test_every_field_carries_the_help_its_flag_shows():
    import dataclasses

    from vicregl_cli.pretrain.config import PretrainConfig

    fields = dataclasses.fields(PretrainConfig)
    assert [spec.name for spec in fields if not spec.metadata.get("help")] == []
    from vicregl_cli.commands.pretrain import config_flags

    shown = {flag.name: flag.default.help for flag in config_flags()}
    assert shown["cov_coeff"] == "Covariance coefficient (nu) (float, default 1.0)"
    assert shown["num_matches"] == "Kept matches per direction, e.g. 20,4 (list of int, default [20, 4])"
    assert PretrainConfig().num_matches is not PretrainConfig().num_matches  # list defaults are not shared
