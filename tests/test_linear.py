"""Linear evaluation: the cached mode's heads trained together equal separate runs and a plain torch loop."""

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from vicregl_cli import cli
from vicregl_cli.backbones import resolve_weights
from vicregl_cli.commands import evaluate as evaluate_commands
from vicregl_cli.evaluate import linear
from vicregl_cli.evaluate.classification import topk_correct
from vicregl_cli.evaluate.linear import LinearConfig, train_heads_on_features
from vicregl_cli.sweep import run_protocol

LRS = [1.0, 0.3, 0.01]


def random_problem(seed=0, count=150, width=12, classes=5):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, width, generator=generator)
    labels = torch.randint(0, classes, (count,), generator=generator)
    features = centres[labels] + torch.randn(count, width, generator=generator)
    return features, labels


def reference_run(features, labels, lr, *, epochs, batch_size, seed, classes):
    """nn.Linear + torch.optim.SGD + CosineAnnealingLR stepped per epoch, same init and batch order."""
    head = nn.Linear(features.shape[1], classes)
    with torch.no_grad():
        head.weight.copy_(
            torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.01
        )
        head.bias.zero_()
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    return head.weight.detach(), head.bias.detach()


def test_cached_heads_trained_together_equal_separate_runs_and_a_plain_loop():
    features, labels = random_problem()
    val_features, val_labels = random_problem(seed=1, count=60)
    common = dict(num_classes=5, epochs=4, batch_size=32, seed=3, show_progress=False)
    together = train_heads_on_features(features, labels, val_features, val_labels, LRS, **common)
    for index, lr in enumerate(LRS):
        alone = train_heads_on_features(features, labels, val_features, val_labels, [lr], **common)
        torch.testing.assert_close(together.weight[index], alone.weight[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(together.bias[index], alone.bias[0], atol=1e-5, rtol=0)
        assert together.metrics[index] == pytest.approx(alone.metrics[0], abs=1e-9)
        weight, bias = reference_run(features, labels, lr, epochs=4, batch_size=32, seed=3, classes=5)
        torch.testing.assert_close(together.weight[index], weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(together.bias[index], bias, atol=1e-5, rtol=0)
    # the learning rates really differ in outcome, and the best head learned something
    assert not torch.allclose(together.weight[0], together.weight[2], atol=1e-3)
    assert max(metrics["top1"] for metrics in together.metrics) > 40.0


def test_topk_correct_counts_top1_and_top5():
    logits = torch.tensor(
        [[0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1]]
    )
    labels = torch.tensor([6, 5, 0])
    assert topk_correct(logits, labels) == (1, 1)  # rows 2 and 3: the label ranks 6th and 7th
    assert topk_correct(logits, torch.tensor([2, 4, 6])) == (1, 3)


def test_linear_cached_cli_path_writes_one_result_per_lr_and_reuses_the_cache(synthetic_root, tmp_path):
    config = LinearConfig(
        data=synthetic_root,
        lrs=(0.3, 0.03),
        epochs=2,
        batch_size=16,
        image_size=32,
        resize=36,
        cached=True,
        num_workers=0,
        cache_dir=tmp_path / "cache",
        bn_batches=2,
        device="cpu",
    )
    records = run_protocol(linear, config, resolve_weights("random", "resnet18"), tmp_path / "linear")
    assert [record["run"] for record in records] == ["cached_lr=0.3", "cached_lr=0.03"]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # train + val features
    summary = json.loads((tmp_path / "linear" / "summary.json").read_text())
    assert summary["metric"] == "top1" and len(summary["runs"]) == 2
    record = records[0]
    assert record["protocol"] == "linear-cached"
    assert record["weights"] == {"path": "random", "sha256": None, "seed": 0}
    assert record["params"]["lr"] == 0.3 and record["params"]["bn_recalibration"]["batches"] == 2
    assert 0.0 <= record["metrics"]["top1"] <= record["metrics"]["top5"] <= 100.0


def test_linear_protocol_trains_through_the_frozen_backbone_with_augmentation(synthetic_root, tmp_path):
    from vicregl_cli.backbones import build_backbone, save_backbone

    torch.manual_seed(0)
    weights = tmp_path / "backbone.pth"
    save_backbone(weights, "resnet18", build_backbone("resnet18").state_dict())
    config = LinearConfig(
        data=synthetic_root, lrs=(0.1,), epochs=1, batch_size=16, image_size=32, resize=36, num_workers=0,
        cache_dir=tmp_path / "cache", device="cpu",
    )  # fmt: skip
    (record,) = run_protocol(linear, config, resolve_weights(weights), tmp_path / "linear")
    assert record["run"] == "lr=0.1" and record["protocol"] == "linear" and record["backbone"] == "resnet18"
    assert record["weights"]["sha256"] is not None and record["params"]["bn_recalibration"] is None
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # only the val features are cached
    assert (tmp_path / "linear" / "lr=0.1" / "result.json").is_file()


def test_default_lr_grid_includes_the_official_resnet_lr(synthetic_root, tmp_path, monkeypatch):
    assert linear.DEFAULT_LRS == (30.0, 10.0, 1.0, 0.3, 0.1, 0.03, 0.02, 0.01)  # 0.02: README, VICReg B.2
    captured = []
    monkeypatch.setattr(evaluate_commands, "run_protocol", lambda _, config, *rest: captured.append(config))
    command = ["linear", "--weights", "random", "--backbone", "resnet18", "--data", str(synthetic_root)]
    result = CliRunner().invoke(cli.app, [*command, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert captured[0].lrs == linear.DEFAULT_LRS
    points = linear.plan(captured[0], resolve_weights("random", "resnet18"))
    assert [point.name for point in points] == [f"lr={lr:g}" for lr in linear.DEFAULT_LRS]
