"""Pretraining: LARS / AdamW groups and the schedule against hand formulas, the model's heads and weighting,
and the engine on synthetic data (dry run, exact resume after SIGTERM, NaN stop, clear errors)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from vicregl_cli.backbones import build_backbone, read_backbone_state
from vicregl_cli.cli import app
from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.config import PretrainConfig, load_config
from vicregl_cli.pretrain.losses import global_loss, local_loss
from vicregl_cli.pretrain.model import LossWeights, VICRegL, projection_mlp
from vicregl_cli.pretrain.optim import LARS, build_optimizer, learning_rate, peak_lr

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "vicregl_cli" / "configs" / "pretrain").glob("*.yaml"))


# ---------------------------------------------------------------- optimisers and schedule


def _reference_lars_step(params, grads, buffers, lr, weight_decay, eta, momentum, excluded):
    """The reference code's LARS, written out per parameter: decay, trust ratio on the decayed update,
    momentum."""
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        update = g.clone()
        if not excluded[i]:
            update = update + weight_decay * p
            w_norm, u_norm = p.norm(), update.norm()
            if w_norm > 0 and u_norm > 0:
                update = update * (eta * w_norm / u_norm)
        buffers[i] = buffers[i] * momentum + update
        params[i] = p - lr * buffers[i]
    return params, buffers


def test_lars_matches_the_reference_update_and_excludes_biases_and_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3, bias=False))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    optimizer = build_optimizer(model, "lars", weight_decay=0.1, eta=0.02)
    decay_group, plain_group = optimizer.param_groups
    assert isinstance(optimizer, LARS)
    assert (
        {p.ndim for p in decay_group["params"]} == {2}
        and decay_group["adapt"]
        and decay_group["weight_decay"] == 0.1
    )
    assert {p.ndim for p in plain_group["params"]} == {1} and not plain_group["adapt"]
    assert (
        plain_group["weight_decay"] == 0.0 and len(plain_group["params"]) == 3
    )  # bias of fc1, BN weight + bias

    names = [name for name, _ in model.named_parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    excluded = [p.ndim == 1 for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    for lr in (0.5, 0.3, 0.1):
        model.zero_grad()
        model(torch.randn(16, 5)).pow(2).sum().backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        params, buffers = _reference_lars_step(params, grads, buffers, lr, 0.1, 0.02, 0.9, excluded)
    for name, expected, actual in zip(names, params, model.parameters(), strict=True):
        torch.testing.assert_close(actual.detach(), expected, rtol=1e-6, atol=1e-7, msg=name)


def test_adamw_decays_only_weights_with_two_or_more_dimensions():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.Linear(4, 2))
    optimizer = build_optimizer(model, "adamw", weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and sorted(p.ndim for p in decay["params"]) == [2, 4]
    assert no_decay["weight_decay"] == 0.0 and [p.ndim for p in no_decay["params"]] == [1, 1, 1, 1]


def test_learning_rate_schedule_at_known_steps():
    peak = peak_lr(0.2, 2048)
    assert peak == pytest.approx(1.6)
    warmup, total = 100, 1100
    assert learning_rate(0, peak, warmup, total) == 0.0
    assert learning_rate(50, peak, warmup, total) == pytest.approx(0.8)
    assert learning_rate(100, peak, warmup, total) == pytest.approx(1.6)
    end = 1.6e-3
    assert learning_rate(600, peak, warmup, total) == pytest.approx((1.6 + end) / 2)
    assert learning_rate(350, peak, warmup, total) == pytest.approx(
        end + (1.6 - end) * (1 + math.cos(math.pi / 4)) / 2
    )
    assert learning_rate(1100, peak, warmup, total) == pytest.approx(end)


# ---------------------------------------------------------------- model


def test_projection_heads_follow_the_reference_layout():
    batch_head = projection_mlp(16, [32, 32, 8], "batch")
    kinds = [type(layer).__name__ for layer in batch_head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert batch_head[-1].bias is None and batch_head[0].bias is not None
    assert [batch_head[0].in_features, batch_head[-1].out_features] == [16, 8]
    layer_head = projection_mlp(16, [32, 8], "layer")
    assert [type(layer).__name__ for layer in layer_head] == ["Linear", "LayerNorm", "ReLU", "Linear"]


def _views(batch: int = 4, sizes=(64, 64, 32), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    views = [torch.randn(batch, 3, s, s, generator=generator) for s in sizes]
    positions = [torch.rand(batch, (s // 32) ** 2, 2, generator=generator) * 100 for s in sizes]
    labels = torch.tensor([0, 1, 2, 1][:batch])
    return views, positions, labels


@pytest.mark.parametrize("alpha", [0.0, 0.75, 1.0])
def test_alpha_weights_global_and_local_terms_and_skips_unused_heads(alpha):
    torch.manual_seed(0)
    weights = LossWeights(alpha=alpha, num_matches=(2, 1))
    model = VICRegL(build_backbone("resnet18"), [32, 16], [16, 8], weights, num_classes=3)
    assert (model.expander is None) == (alpha == 0.0)
    assert (model.maps_projector is None) == (alpha == 1.0)
    views, positions, labels = _views()
    model.train()
    outputs = model(views, positions, labels)
    # independent recomputation from the same heads (BatchNorm in train mode gives the same batch statistics)
    torch.manual_seed(0)
    expected = 0.0
    with torch.no_grad():
        trunk = [model.backbone(v) for v in views]
        if alpha > 0:
            expected += alpha * global_loss([model.expander(pooled) for _, pooled in trunk]).total
        if alpha < 1:
            maps = []
            for fmap, _ in trunk:
                b, c = fmap.shape[:2]
                flat = fmap.permute(0, 2, 3, 1).reshape(-1, c)
                maps.append(model.maps_projector(flat).view(b, -1, 8))
            expected += (1 - alpha) * local_loss(maps, positions, num_matches=(2, 1)).total
        expected += nn.functional.cross_entropy(model.probe(trunk[0][1]), labels)
    assert float(outputs["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert ("global_inv" in outputs) == (alpha > 0) and ("local_inv" in outputs) == (alpha < 1)


def test_online_probe_trains_only_the_probe():
    views, positions, labels = _views()
    runs = {}
    for classes in (3, 0):
        torch.manual_seed(0)
        model = VICRegL(
            build_backbone("resnet18"),
            [32, 16],
            [16, 8],
            LossWeights(alpha=0.5, num_matches=(2, 1)),
            num_classes=classes,
        )
        outputs = model(views, positions, labels)
        outputs["loss"].backward()
        runs[classes] = (model, outputs)
    with_probe, without_probe = runs[3], runs[0]
    assert without_probe[0].probe is None and with_probe[0].probe.weight.grad.abs().sum() > 0
    assert float((with_probe[1]["loss"] - without_probe[1]["loss"]).detach()) == pytest.approx(
        float(with_probe[1]["probe_loss"]), rel=1e-5
    )
    plain = dict(without_probe[0].named_parameters())
    for name, parameter in with_probe[0].named_parameters():
        if not name.startswith("probe."):
            torch.testing.assert_close(parameter.grad, plain[name].grad, rtol=0, atol=0, msg=name)
    assert 0.0 <= float(with_probe[1]["probe_top1"]) <= 1.0


# ---------------------------------------------------------------- configuration


def test_config_file_then_flag_overrides_and_unknown_keys(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "backbone": "resnet18",
                "base_lr": "5e-4",
                "crop_sizes": [224, 96],
                "crop_counts": [2, 6],
                "crop_min_scales": [0.4, 0.08],
                "crop_max_scales": [1, 0.4],
            }
        )
    )
    config = load_config(preset, {"base_lr": 0.3, "num_matches": "8,2", "epochs": None})
    assert config.backbone == "resnet18" and config.base_lr == 0.3 and config.num_matches == [8, 2]
    assert config.epochs == PretrainConfig().epochs and config.crop_max_scales == [1.0, 0.4]
    with pytest.raises(UserError, match="unknown pretraining option"):
        load_config(None, {"learning_rate": 1.0})
    with pytest.raises(UserError, match="alpha"):
        load_config(None, {"alpha": 1.5})


def test_every_preset_loads():
    names = {p.stem for p in PRESETS}
    paper = {f"{net}_alpha{a}" for net in ("resnet50", "convnext_small", "convnext_base", "convnext_xlarge")
             for a in ("0.9", "0.75")}  # fmt: skip
    assert paper | {f"{name}_reference" for name in paper} | {"vicreg_resnet50", "demo"} <= names
    for preset in PRESETS:
        config = load_config(preset, {})
        written = yaml.safe_load(preset.read_text())
        assert {key: getattr(config, key) for key in written} == written, preset.name
        if preset.stem != "demo":  # the papers: LARS for ResNets, AdamW for ConvNeXts
            assert (config.optimizer == "lars") == config.backbone.startswith("resnet"), preset.name
        if preset.stem.endswith("_reference"):  # the paper preset but the reference code's two defaults
            twin = dataclasses.asdict(load_config(preset.with_name(f"{preset.stem[:-10]}.yaml"), {}))
            assert not twin["l2_all_matches"] and not twin["ignore_flips"]
            assert dataclasses.asdict(config) == {**twin, "l2_all_matches": True, "ignore_flips": True}
    resnet = load_config(REPO / "vicregl_cli/configs/pretrain/resnet50_alpha0.75.yaml", {})
    assert (resnet.alpha, resnet.batch_size, resnet.epochs, resnet.base_lr, resnet.weight_decay) == (
        0.75, 2048, 300, 0.2, 1e-6)
    assert (resnet.crop_sizes, resnet.crop_min_scales, resnet.mlp, resnet.maps_mlp) == (
        [224], [0.08], "8192-8192-8192", "512-512-512")
    convnext = load_config(REPO / "vicregl_cli/configs/pretrain/convnext_small_alpha0.9.yaml", {})
    assert (convnext.alpha, convnext.optimizer, convnext.base_lr, convnext.weight_decay) == (
        0.9, "adamw", 7.5e-4, 0.05)
    assert (convnext.crop_sizes, convnext.crop_counts) == ([224, 96], [2, 6])
    assert (convnext.crop_min_scales, convnext.crop_max_scales) == ([0.4, 0.08], [1.0, 0.4])
    readme = {"S": ("small", 100, 384, 7.5e-4), "B": ("base", 400, 576, 5e-4),
              "XL": ("xlarge", 400, 576, 5e-4)}  # fmt: skip
    for (letter, (size, *settings)), alpha in itertools.product(readme.items(), ("0.9", "0.75")):
        for path in PRESETS[0].parent.glob(f"convnext_{size}_alpha{alpha}*.yaml"):  # paper and reference
            cfg = load_config(path, {})
            assert [cfg.backbone, cfg.epochs, cfg.batch_size, cfg.base_lr] == [f"convnext_{size}", *settings]
            assert path.read_text().startswith(f"# VICRegL, ConvNeXt-{letter}, alpha {alpha} ("), path.name
    vicreg = load_config(REPO / "vicregl_cli/configs/pretrain/vicreg_resnet50.yaml", {})
    assert (vicreg.alpha, vicreg.cov_coeff, vicreg.epochs) == (1.0, 2.0, 1000)


# ---------------------------------------------------------------- engine on synthetic data


def tiny_config(data: Path, out: Path, **changes) -> PretrainConfig:
    """resnet18 on 2 x 64 px views (2 x 2 grids), tiny heads: 24 images / batch 8 = 3 steps per epoch."""
    values = dict(
        data=str(data), out=str(out), backbone="resnet18", mlp="32-32", maps_mlp="16-16", alpha=0.75,
        num_matches=[2, 2], crop_sizes=[64], crop_counts=[2], crop_min_scales=[0.3], crop_max_scales=[1.0],
        optimizer="lars", base_lr=5.0, weight_decay=1e-6, epochs=2, warmup_epochs=1, batch_size=8,
        precision="fp32", num_workers=0, seed=0, checkpoint_every=1, log_every=2, probe=True,
    )  # fmt: skip
    values.update(changes)
    return load_config(None, values)


def test_sigterm_mid_epoch_then_resume_ends_bit_identical(train_dir, tmp_path):
    from vicregl_cli.pretrain.loop import Hooks, TrainingInterrupted, train

    reference = train(tiny_config(train_dir, tmp_path / "straight"), device="cpu", command_line=["t"])
    assert (reference.start_step, reference.end_step, reference.total_steps) == (0, 6, 6)

    def terminate_after_step_4(step: int, model: nn.Module) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted, match="SIGTERM after step 4"):
        train(tiny_config(train_dir, run, num_workers=2), device="cpu", hooks=Hooks(terminate_after_step_4))
    saved = torch.load(run / "checkpoint.pth", weights_only=True)
    assert (saved["step"], saved["sampler"]["epoch"], saved["sampler"]["batch"]) == (4, 1, 1)
    assert not (run / "backbone.pth").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    resumed = train(tiny_config(train_dir, run, num_workers=2), device="cpu")
    assert (resumed.start_step, resumed.end_step) == (4, 6)
    expected = torch.load(tmp_path / "straight" / "checkpoint.pth", weights_only=True)
    actual = torch.load(run / "checkpoint.pth", weights_only=True)
    initial = tiny_config(train_dir, tmp_path)  # weights moved away from the seed's initialisation
    assert expected["model"].keys() == actual["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(value, actual["model"][key]), key
    for index, state in expected["optimizer"]["state"].items():
        assert torch.equal(state["mu"], actual["optimizer"]["state"][index]["mu"])
    torch.manual_seed(initial.seed)
    fresh = build_backbone("resnet18").state_dict()
    assert not torch.equal(fresh["conv1.weight"], expected["model"]["backbone.conv1.weight"])

    name, backbone_state = read_backbone_state(run / "backbone.pth")
    assert name == "resnet18" and torch.equal(backbone_state["layer4.1.bn2.weight"],
                                             expected["model"]["backbone.layer4.1.bn2.weight"])
    lines = [yaml.safe_load(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]
    for key in ("global_inv", "global_var", "global_cov", "local_inv", "local_var", "local_cov", "lr",
                "samples_per_s", "probe_top1", "repr_std", "repr_corr", "emb_std", "emb_corr"):
        assert key in lines[-1], key
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["config"]["backbone"] == "resnet18" and written["world_size"] == 1


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(train_dir, tmp_path):
    from vicregl_cli.pretrain.loop import Hooks, NonFiniteLoss, train

    def poison_after(poisoned_step: int):
        def hook(step: int, model: nn.Module) -> None:
            if step == poisoned_step:
                with torch.no_grad():
                    model.backbone.conv1.weight.fill_(float("nan"))

        return hook

    run = tmp_path / "nan"
    expected = r"not finite at step 5 \(epoch 1, batch 1\): .*global_inv.*local_var"
    with pytest.raises(NonFiniteLoss, match=expected):
        train(tiny_config(train_dir, run), device="cpu", hooks=Hooks(poison_after(4)))
    kept = torch.load(run / "checkpoint.pth", weights_only=True)
    assert kept["step"] == 3 and kept["sampler"] == {"epoch": 1, "batch": 0, "seed": 0}
    assert all(torch.isfinite(value).all() for value in kept["model"].values() if value.is_floating_point())
    assert not (run / "backbone.pth").exists()

    early = tmp_path / "nan_weights"  # weights broken just before the end-of-epoch checkpoint: none written
    with pytest.raises(NonFiniteLoss, match="weights are not finite after step 3"):
        train(tiny_config(train_dir, early, epochs=1), device="cpu", hooks=Hooks(poison_after(3)))
    assert not (early / "checkpoint.pth").exists()


def test_bad_inputs_fail_before_training(train_dir, tmp_path):
    from vicregl_cli.pretrain.loop import train
    from vicregl_cli.rng_state import save_checkpoint

    empty = tmp_path / "empty" / "cat"
    empty.mkdir(parents=True)
    with pytest.raises(UserError, match="without images"):
        train(tiny_config(empty.parent, tmp_path / "a"), device="cpu")
    with pytest.raises(UserError, match="at least 32 pixels"):
        train(tiny_config(train_dir, tmp_path / "b", crop_sizes=[16]), device="cpu")
    with pytest.raises(UserError, match="fewer than one batch"):
        train(tiny_config(train_dir, tmp_path / "c", batch_size=32), device="cpu")
    other = tmp_path / "other"
    other.mkdir()
    save_checkpoint(other / "checkpoint.pth", {"backbone_name": "resnet34", "model": {}, "optimizer": {},
                                               "sampler": {}, "step": 0, "config": {}})
    with pytest.raises(UserError, match="holds a resnet34 run but --backbone is resnet18"):
        train(tiny_config(train_dir, other), device="cpu")
    with pytest.raises(UserError, match="--no-resume"):
        train(tiny_config(train_dir, other), no_resume=True, device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dry_run_prints_the_plan_without_training(train_dir, tmp_path):
    result = CliRunner().invoke(app, [
        "pretrain", "--config", "demo", "--data", str(train_dir),
        "--out", str(tmp_path / "dry"), "--batch-size", "8", "--epochs", "3", "--base-lr", "0.4", "--dry-run",
        "--crop-sizes", "64,64", "--crop-counts", "2,2", "--crop-min-scales", "0.2,0.05",
        "--crop-max-scales", "1,0.2", "--num-matches", "2,2", "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output.split("world_size")[0])["config"]
    assert printed["batch_size"] == 8 and printed["crop_sizes"] == [64, 64]
    assert printed["crop_counts"] == [2, 2]
    lines = [line for line in result.output.splitlines() if ": " in line and not line.startswith(" ")]
    figures = dict(line.split(": ", 1) for line in lines)
    assert figures["world_size"] == "1" and figures["steps_per_epoch"] == "3"
    assert figures["total_steps"] == "9"
    assert float(figures["peak_lr"]) == pytest.approx(0.4 * 8 / 256)
    assert figures["view_shapes"] == "[[8, 3, 64, 64], [8, 3, 64, 64], [8, 3, 64, 64], [8, 3, 64, 64]]"
    assert math.isfinite(float(figures["first_batch_loss"]))
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_every_preset_dry_runs_through_the_cli(train_dir, tmp_path, preset):
    tiny = ("--dry-run --batch-size 4 --backbone resnet18 --crop-sizes 64 --crop-counts 2 --crop-min-scales "
            "0.3 --crop-max-scales 1 --mlp 32-32 --maps-mlp 16-16 --num-matches 2,2 --epochs 1 "
            "--warmup-epochs 0 --num-workers 0 --device cpu").split()  # fmt: skip
    result = CliRunner().invoke(app, ["pretrain", "--config", str(preset), "--data", str(train_dir),
                                      "--out", str(tmp_path / "dry"), *tiny])  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output.split("world_size")[0])["config"]
    own = dataclasses.asdict(load_config(preset, {}))  # the preset's settings that the flags leave alone
    kept = ("alpha", "l2_all_matches", "ignore_flips", "optimizer", "base_lr", "weight_decay", "blur_probs")
    assert {key: printed[key] for key in kept} == {key: own[key] for key in kept}
    assert printed["backbone"] == "resnet18" and not (tmp_path / "dry").exists()
