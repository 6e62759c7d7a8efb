"""Semi-supervised subsets: exactly ceil(p % × n_c) per class, deterministic, SimCLR split files honoured."""

import json
import math
from collections import Counter

import pytest
from PIL import Image
from typer.testing import CliRunner

from vicregl_cli import cli
from vicregl_cli.backbones import resolve_weights
from vicregl_cli.commands import evaluate as evaluate_commands
from vicregl_cli.data.readers import image_folder
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate import semi
from vicregl_cli.evaluate.semi import SemiConfig, balanced_subset, read_split_file
from vicregl_cli.sweep import run_protocol


def test_balanced_subset_takes_ceil_percent_of_every_class_deterministically():
    counts = {0: 1, 1: 9, 2: 10, 3: 11, 4: 30, 5: 123, 6: 1300}  # 10 % of 30 in floats: 3.0000000000000004
    targets = [label for label, count in counts.items() for _ in range(count)]
    for percent in (1, 10):
        subset = balanced_subset(targets, percent, seed=0)
        per_class = Counter(targets[index] for index in subset)
        expected = {label: max(1, math.ceil(percent * count / 100)) for label, count in counts.items()}
        assert dict(per_class) == expected
        assert len(set(subset)) == len(subset)
        assert balanced_subset(targets, percent, seed=0) == subset
    assert balanced_subset(targets, 10, seed=1) != balanced_subset(targets, 10, seed=0)


def _image_folder(root, files_per_class):
    for name, count in files_per_class.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (8, 8), (index, 0, 0)).save(root / name / f"{name}_{index}.png")
    return image_folder(root)


def test_split_file_in_simclr_format_is_honoured(tmp_path):
    dataset = _image_folder(tmp_path / "train", {"n01": 4, "n02": 3})
    split = tmp_path / "1percent.txt"
    split.write_text("n02_2.png\nn01_0.png\n\nn01_3.png\n")
    chosen = read_split_file(split, dataset)
    assert sorted(dataset.samples[i][0].name for i in chosen) == ["n01_0.png", "n01_3.png", "n02_2.png"]
    assert [dataset.samples[i][1] for i in chosen] == [0, 0, 1]

    split.write_text("n01_0.png\nn01_9.png\n")
    with pytest.raises(UserError, match=r"1 listed image\(s\) not found.*n01_9.png"):
        read_split_file(split, dataset)
    split.write_text("n03_0.png\n")
    with pytest.raises(UserError, match="n03"):
        read_split_file(split, dataset)


def test_semi_fine_tunes_on_the_subset_and_writes_a_result(tmp_path):
    from vicregl_cli.data.synthetic import generate

    generate(tmp_path / "synthetic", num_train=24, num_val=12, image_size=40, seed=0, workers=1)
    config = SemiConfig(
        data=tmp_path / "synthetic" / "classification",
        percent=10,
        lrs_backbone=(0.01,),
        lrs_head=(0.1, 0.0),
        epochs=1,
        batch_size=8,
        image_size=32,
        resize=36,
        num_workers=0,
        device="cpu",
    )
    records = run_protocol(semi, config, resolve_weights("random", "resnet18"), tmp_path / "semi")
    assert [record["run"] for record in records] == [
        "lr_backbone=0.01_lr_head=0.1",
        "lr_backbone=0.01_lr_head=0",
    ]
    classes = len(image_folder(config.data / "train").classes)
    assert records[0]["params"]["labelled_images"] == classes  # 24 images over 12 classes: 1 each
    summary = json.loads((tmp_path / "semi" / "summary.json").read_text())
    assert summary["metric"] == "top1" and len(summary["runs"]) == 2


def test_grid_sweeps_backbone_by_head_lrs_and_the_paper_pair_stays_the_default(tmp_path, monkeypatch):
    for split in ("train", "val"):
        _image_folder(tmp_path / "data" / split, {"n01": 20, "n02": 20})
    weights = resolve_weights("random", "resnet18")

    def pairs(**fields) -> list[tuple[float, float]]:
        points = semi.plan(SemiConfig(data=tmp_path / "data", **fields), weights)
        assert all("grid" not in point.params for point in points)  # the lrs are the record, not the flag
        return [(point.params["lr_backbone"], point.params["lr_head"]) for point in points]

    assert pairs(percent=1) == [(0.03, 0.08)] and pairs(percent=10) == [(0.01, 0.1)]
    grid = pairs(percent=1, grid=True)
    assert grid == [(b, h) for b in (0.003, 0.01, 0.03, 0.1) for h in (0.03, 0.08, 0.1, 0.3)]
    assert (0.03, 0.08) in grid and (0.01, 0.1) in grid  # both paper pairs are grid points
    assert pairs(percent=10, grid=True, lrs_head=(0.5,)) == [(b, 0.5) for b in semi.GRID_BACKBONE]
    captured = []
    monkeypatch.setattr(evaluate_commands, "run_protocol", lambda _, config, *rest: captured.append(config))
    command = ["semi", "--weights", "random", "--backbone", "resnet18", "--data", str(tmp_path / "data"),
               "--out", str(tmp_path / "out"), "--percent", "1"]  # fmt: skip
    for flags in ([], ["--grid"]):
        result = CliRunner().invoke(cli.app, [*command, *flags])
        assert result.exit_code == 0, result.output
    assert [config.grid for config in captured] == [False, True]
