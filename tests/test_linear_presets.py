"""Places205 / iNaturalist 2018 linear probes: the presets' per-epoch learning rates equal VICReg B.3's,
explicit flags beat a preset, and the readers read their standard layouts and refuse bad files in one line."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from vicregl_cli import cli
from vicregl_cli.backbones import resolve_weights
from vicregl_cli.commands import evaluate as evaluate_commands
from vicregl_cli.data.inat import read_inat18
from vicregl_cli.data.places205 import read_places205
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate import linear
from vicregl_cli.evaluate.linear_presets import LrSchedule, preset_settings
from vicregl_cli.sweep import run_protocol

PLACES_IMAGES = "data/vision/torralba/deeplearning/images256"
# VICReg appendix B.3, written out epoch by epoch (0-based): lr / 10 at epochs 4, 8, 12 (Places205, 28 epochs)
# and at 24, 48, 72 (iNaturalist 2018, 84 epochs)
PLACES205_LRS = [0.003] * 4 + [0.0003] * 4 + [0.00003] * 4 + [0.000003] * 16
INAT18_LRS = [0.005] * 24 + [0.0005] * 24 + [0.00005] * 24 + [0.000005] * 12
SMALL = ["--image-size", "16", "--resize", "18", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The synthetic classification images in Places205's and iNaturalist 2018's standard layouts."""
    from vicregl_cli.data.synthetic import generate

    root = tmp_path_factory.mktemp("layouts")
    generate(root / "synth", num_train=12, num_val=12, image_size=36, seed=0, workers=1)
    folder = root / "synth" / "classification"
    classes = sorted(path.name for path in (folder / "train").iterdir())
    places, inat = root / "places205", root / "inat18"
    (places / "trainvalsplit_places205").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(folder / split, places / PLACES_IMAGES / "a" / split)
        shutil.copytree(folder / split, inat / "train_val2018" / split)
        files = sorted((folder / split).glob("*/*.png"))
        lines = [f"a/{split}/{f.parent.name}/{f.name} {classes.index(f.parent.name)}" for f in files]
        (places / f"trainvalsplit_places205/{split}_places205.csv").write_text("\n".join(lines) + "\n")
        content = {  # category ids 100, 101, ... so that labels (0, 1, ...) are an index, not the id
            "images": [{"id": 7 * i, "file_name": f"train_val2018/{split}/{f.parent.name}/{f.name}"}
                       for i, f in enumerate(files)],
            "annotations": [{"id": i, "image_id": 7 * i, "category_id": 100 + classes.index(f.parent.name)}
                            for i, f in enumerate(files)],
            "categories": [{"id": 100 + k, "name": name} for k, name in enumerate(classes)],
        }  # fmt: skip
        (inat / f"{split}2018.json").write_text(json.dumps(content))
    return {"places205": places, "inat18": inat, "classes": classes, "folder": folder}


def test_preset_schedules_give_the_papers_learning_rate_at_every_epoch():
    for preset, expected in (("places205", PLACES205_LRS), ("inat18", INAT18_LRS)):
        settings = preset_settings(preset)
        config = linear.LinearConfig(data=Path("."), **settings)
        schedule = linear.schedule_of(config)
        schedule.check()
        (lr,) = config.lrs
        assert [lr * schedule.factor(epoch) for epoch in range(config.epochs)] == pytest.approx(expected)
        assert (config.momentum, config.weight_decay, config.batch_size) == (0.9, 1e-4, 256)
        # torch's MultiStepLR, stepped once per epoch, agrees
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
        steps = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), gamma=0.1)
        torch_lrs = []
        for _ in range(config.epochs):
            torch_lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            steps.step()
        assert torch_lrs == pytest.approx(expected)
    cosine = LrSchedule("cosine", 4)
    expected_cosine = [1.0, 0.853553, 0.5, 0.146447]  # (1 + cos(pi e / 4)) / 2
    assert [cosine.factor(epoch) for epoch in range(4)] == pytest.approx(expected_cosine, abs=1e-6)


def test_the_protocol_trains_every_epoch_at_the_papers_rate(layouts, tmp_path, monkeypatch):
    """`vicregl linear --preset places205`, the full 28 epochs: the rate SGD really steps with, per epoch."""
    used = []
    original_step = torch.optim.SGD.step

    def recording_step(optimizer, *args, **kwargs):
        used.append(optimizer.param_groups[0]["lr"])
        return original_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    lines = (layouts["places205"] / "trainvalsplit_places205/train_places205.csv").read_text().splitlines()
    short = _write(tmp_path / "four.csv", "\n".join(lines[:4]))  # labels 0-3: a quick 28 epochs
    command = ["linear", "--preset", "places205", "--data", str(layouts["places205"]), "--weights", "random",
               "--backbone", "resnet10_small_w16", "--out", str(tmp_path / "out"), "--batch-size", "4",
               "--train-list", str(short), "--val-list", str(short), "--bn-batches", "1", "--no-cache",
               *SMALL]  # fmt: skip
    result = CliRunner().invoke(cli.app, command)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert used == pytest.approx(PLACES205_LRS)  # 4 images, batch 4: one step per epoch
    record = json.loads((tmp_path / "out" / "lr=0.003" / "result.json").read_text())
    assert record["dataset"] == f"places205:{layouts['places205'].resolve()}"
    assert record["params"]["milestones"] == [4, 8, 12] and record["params"]["weight_decay"] == 1e-4
    assert record["params"]["classes"] == 4 and record["params"]["train_images"] == 4


def reference_heads(features, labels, lr, *, epochs, milestones, seed, classes):
    """nn.Linear + torch.optim.SGD (momentum 0.9, wd 1e-4) + MultiStepLR stepped per epoch, full batch."""
    head = nn.Linear(features.shape[1], classes)
    with torch.no_grad():
        init = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed))
        head.weight.copy_(init * 0.01)
        head.bias.zero_()
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + epoch))
        loss = F.cross_entropy(head(features[order]), labels[order])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return head.weight.detach(), head.bias.detach()


def test_cached_heads_follow_the_step_schedule():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 6, generator=generator)
    labels = torch.randint(0, 3, (40,), generator=generator)
    schedule = LrSchedule("step", 10, (3, 6), 0.1)
    trained = linear.train_heads_on_features(
        features, labels, features, labels, [0.5, 2.0], num_classes=3, epochs=10, batch_size=40,
        weight_decay=1e-4, seed=2, schedule=schedule, show_progress=False,
    )  # fmt: skip
    for index, lr in enumerate([0.5, 2.0]):
        weight, bias = reference_heads(features, labels, lr, epochs=10, milestones=[3, 6], seed=2, classes=3)
        torch.testing.assert_close(trained.weight[index], weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(trained.bias[index], bias, atol=1e-5, rtol=0)


def test_explicit_flags_beat_the_preset(layouts, tmp_path, monkeypatch):
    captured = []
    monkeypatch.setattr(evaluate_commands, "run_protocol", lambda _, config, *rest: captured.append(config))
    base = ["linear", "--weights", "random", "--backbone", "resnet18", "--out", str(tmp_path / "out")]
    runs = {
        "preset": ["--preset", "inat18", "--data", str(layouts["inat18"])],
        "override": ["--preset", "places205", "--data", str(layouts["places205"]), "--lr", "0.01", "0.02",
                     "--epochs", "14", "--milestones", "3,6", "9", "--weight-decay", "0"],
        "cosine": ["--preset", "places205", "--data", str(layouts["places205"]), "--schedule", "cosine"],
        "default": ["--data", str(layouts["folder"]), "--schedule", "step", "--milestones", "30", "60",
                    "--gamma", "0.5", "--lr", "0.1", "0.3"],
    }  # fmt: skip
    for arguments in runs.values():
        result = CliRunner().invoke(cli.app, [*base, *arguments])
        assert result.exit_code == 0, result.output
    preset, override, cosine, default = captured
    assert (preset.dataset, preset.lrs, preset.epochs) == ("inat18", (0.005,), 84)
    assert (preset.milestones, preset.weight_decay, preset.schedule) == ((24, 48, 72), 1e-4, "step")
    assert (override.lrs, override.epochs, override.milestones) == ((0.01, 0.02), 14, (3, 6, 9))
    assert (override.weight_decay, override.schedule, override.dataset) == (0.0, "step", "places205")
    assert (cosine.schedule, cosine.milestones, cosine.epochs, cosine.lrs) == ("cosine", (), 28, (0.003,))
    assert (default.dataset, default.epochs, default.weight_decay, default.lrs) == ("imagefolder", 100, 1e-6,
                                                                                    (0.1, 0.3))  # fmt: skip
    assert (default.schedule, default.milestones, default.gamma) == ("step", (30, 60), 0.5)
    for config in captured:
        linear.plan(config, resolve_weights("random", "resnet18"))


def test_dry_run_prints_the_step_schedule(layouts, tmp_path):
    command = ["linear", "--preset", "inat18", "--data", str(layouts["inat18"]), "--weights", "random",
               "--backbone", "resnet18", "--out", str(tmp_path / "out"), "--dry-run"]  # fmt: skip
    result = CliRunner().invoke(cli.app, command, terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "dataset: inat18:" in text and "nothing was trained" in text
    for span in ("epochs 0-23: 0.005", "epochs 24-47: 0.0005", "epochs 48-71: 5e-05", "epochs 72-83: 5e-06"):
        assert span in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (LrSchedule("step", 28, ()), "needs --milestones"),
        (LrSchedule("step", 10, (4, 8, 12)), "within 1..9"),
        (LrSchedule("step", 28, (8, 4)), "increase strictly"),
        (LrSchedule("step", 28, (4,), 0.0), "--gamma"),
        (LrSchedule("cosine", 28, (4,)), "--milestones needs --schedule step"),
        (LrSchedule("linear", 28), "--schedule must be one of"),
    ],
)
def test_bad_schedules_are_refused(schedule, message):
    with pytest.raises(UserError, match=message):
        schedule.check()


def test_places205_reader_reads_the_standard_layout(layouts, tmp_path):
    root, classes = layouts["places205"], layouts["classes"]
    train, val = read_places205(root)
    assert (len(train), len(val)) == (12, 12) and train.root == root / PLACES_IMAGES
    assert train.classes == [f"a/train/{name}" for name in classes]
    for dataset, split in ((train, "train"), (val, "val")):
        for path, label in dataset.samples:
            assert Path(path).is_file() and Path(path).parent.name == classes[label]
            assert Path(path).parent.parent == root / PLACES_IMAGES / "a" / split
    # --train-list / --val-list: lists elsewhere (here: the val list serves both)
    other = tmp_path / "lists"
    other.mkdir()
    shutil.copy(root / "trainvalsplit_places205/val_places205.csv", other / "mine.csv")
    train, _ = read_places205(root, train_list=other / "mine.csv", val_list=other / "mine.csv")
    assert [label for _, label in train.samples] == list(range(12))


def test_inat18_reader_reads_the_standard_layout(layouts):
    root, classes = layouts["inat18"], layouts["classes"]
    train, val = read_inat18(root, None, lambda image: image.size)
    assert (len(train), len(val)) == (12, 12) and train.classes == classes
    for dataset, split in ((train, "train"), (val, "val")):
        for path, label in dataset.samples:  # category id 100 + k is label k
            assert Path(path).parent == root / "train_val2018" / split / classes[label]
    assert val[3] == ((36, 36), val.samples[3][1])


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_places205_bad_files_give_one_clear_error(layouts, tmp_path):
    root = layouts["places205"]
    good = (root / "trainvalsplit_places205/train_places205.csv").read_text()
    first = good.splitlines()[0].split()[0]
    cases = {
        "missing.csv": (None, "does not exist"),
        "malformed.csv": (f"{first} 0\n{first}\n", "malformed.csv:2: expected '<image path> <label>'"),
        "letters.csv": (f"{first} abbey\n", "expected '<image path> <label>'"),
        "negative.csv": (f"{first} -1\n", "expected '<image path> <label>'"),
        "empty.csv": ("\n", "lists no images"),
        "range.csv": (good + f"{first} 12\n", re.escape("labels out of range [0, 12): 12")),
        "absent.csv": (f"{first} 0\n", "does not exist"),  # the image path (below) is checked
    }
    for name, (text, message) in cases.items():
        listing = tmp_path / name if text is None else _write(tmp_path / name, text)
        if name == "absent.csv":
            _write(listing, "a/missing.png 0\n")
        train_list = None if name == "range.csv" else listing
        with pytest.raises(UserError, match=message) as caught:
            read_places205(root, train_list=train_list, val_list=listing)
        assert "\n" not in str(caught.value), name
    gaps = _write(tmp_path / "gaps.csv", f"{first} 0\n{first} 2\n")
    with pytest.raises(UserError, match=r"no image of labels \[1\]"):
        read_places205(root, train_list=gaps)
    with pytest.raises(UserError, match="Places205 root .* does not exist"):
        read_places205(tmp_path / "nowhere")


def test_inat18_bad_files_give_one_clear_error(layouts, tmp_path):
    good = json.loads((layouts["inat18"] / "train2018.json").read_text())
    image = good["images"][0]
    cases = {
        "not json": ("{images: [", "is not valid JSON"),
        "no images": ({**good, "images": None}, "has no 'images' list"),
        "image without file_name": ({**good, "images": [{"id": 1}]},
                                    r"images\[0\] lacks one of id, file_name"),
        "image without annotation": ({**good, "annotations": good["annotations"][1:]},
                                     "1 image\\(s\\) have no annotation, e.g. image id 0"),
        "annotation of no image": ({**good, "annotations": [*good["annotations"],
                                                            {"image_id": 99999, "category_id": 100}]},
                                   "names image id 99999, which is not in 'images'"),
        "two categories": ({**good, "annotations": [*good["annotations"],
                                                    {"image_id": 0, "category_id": 101}]},
                           "image id 0 has two categories"),
        "category out of range": ({**good, "annotations": [{"image_id": image["id"], "category_id": 5}],
                                   "images": [image]}, "category ids out of range .*: 5"),
        "empty split": ({**good, "images": [], "annotations": []}, "lists no images"),
    }  # fmt: skip
    for case, (content, message) in cases.items():
        root = tmp_path / case.replace(" ", "_")
        shutil.copytree(layouts["inat18"], root, symlinks=True)
        _write(root / "val2018.json", content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(UserError, match=message) as caught:
            read_inat18(root)
        assert "\n" not in str(caught.value), case
    (tmp_path / "no_val").mkdir()
    shutil.copy(layouts["inat18"] / "train2018.json", tmp_path / "no_val" / "train2018.json")
    with pytest.raises(UserError, match="val2018.json does not exist"):
        read_inat18(tmp_path / "no_val")


def test_inat18_cached_sweep_reads_and_caches_list_features(layouts, tmp_path):
    """The frozen-feature extractor and its cache take the list datasets (fingerprint: paths, sizes,
    labels)."""
    settings = preset_settings("inat18", epochs=6, milestones=(2, 4), batch_size=12, lrs=(0.005, 0.05))
    config = linear.LinearConfig(
        data=layouts["inat18"], cached=True, image_size=32, resize=36, num_workers=0, bn_batches=1,
        cache_dir=tmp_path / "cache", device="cpu", **settings,
    )  # fmt: skip
    weights = resolve_weights("random", "resnet10_small_w16")
    records = run_protocol(linear, config, weights, tmp_path / "out")
    assert [record["run"] for record in records] == ["cached_lr=0.005", "cached_lr=0.05"]
    expected = "step: epochs 0-1: 0.005, epochs 2-3: 0.0005, epochs 4-5: 5e-05"
    assert records[0]["params"]["lr_schedule"] == expected
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    for path in (tmp_path / "out").glob("*/result.json"):
        path.unlink()
    again = run_protocol(linear, config, weights, tmp_path / "out")  # features from the cache: same metrics
    assert [record["metrics"] for record in again] == [record["metrics"] for record in records]
