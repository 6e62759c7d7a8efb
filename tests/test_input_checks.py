"""Every bad input is refused by the plan, before any feature extraction or training step and in --dry-run:
exit code 1, one line on stderr, nothing written (issue 20). Images far smaller than the evaluation view get a
warning naming the flags that fit them. Each command runs in-process through vicregl_cli.cli.main."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vicregl_cli import cli, sweep
from vicregl_cli.data.synthetic import generate
from vicregl_cli.pretrain import plan as pretrain_plan

torch.set_num_threads(1)
RANDOM = ["--weights", "random", "--backbone", "resnet18_small", "--device", "cpu"]
FITTING = ["--image-size", "32", "--resize", "36", "--workers", "0", "--no-cache"]  # views that fit 40 px


@pytest.fixture
def no_compute(monkeypatch):
    """Any evaluation point or pretraining model reached means a check came too late."""

    def computed(*_args, **_kwargs):
        raise AssertionError("the command computed before refusing its input")

    monkeypatch.setattr(sweep, "execute_point", computed)
    monkeypatch.setattr(pretrain_plan, "build_model", computed)
    monkeypatch.setattr("vicregl_cli.pretrain.loop.build_model", computed)


def vicregl(monkeypatch, capsys, *arguments: str) -> tuple[int, str]:
    """(exit code, stderr) of `vicregl ARGUMENTS` run by the console entry point."""
    monkeypatch.setattr(sys, "argv", ["vicregl", *arguments])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    return exited.value.code, capsys.readouterr().err


def refused(monkeypatch, capsys, *arguments: str) -> str:
    """The one error line of a refused command (exit code 1)."""
    code, err = vicregl(monkeypatch, capsys, *arguments)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_knn_out_that_is_a_file_or_lies_under_one(monkeypatch, capsys, synthetic_root, tmp_path, dry_run):
    file = tmp_path / "taken.txt"
    file.write_text("keep")
    knn = ["knn", *RANDOM, "--data", str(synthetic_root), *dry_run]  # the 40 px note must not come first
    line = refused(monkeypatch, capsys, *knn, "--out", str(file))
    assert line == f"error: --out {file} is a file, not a folder: choose another --out"
    line = refused(monkeypatch, capsys, *knn, "--out", str(file / "run"))
    assert line == f"error: --out {file / 'run'} cannot be created: {file} is a file"
    assert file.read_text() == "keep" and tree(tmp_path) == ["taken.txt"]


@pytest.mark.usefixtures("no_compute")
def test_knn_out_in_a_read_only_folder(monkeypatch, capsys, synthetic_root, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere: the permission answer is simulated for `locked`
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    line = refused(monkeypatch, capsys, "knn", *RANDOM, *FITTING, "--data", str(synthetic_root),
                   "--out", str(locked / "knn"))  # fmt: skip
    assert line == f"error: --out {locked / 'knn'} is not writable (no write permission on {locked})"
    assert tree(tmp_path) == ["locked"]


@pytest.mark.usefixtures("no_compute")
def test_weights_naming_a_directory(monkeypatch, capsys, synthetic_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    line = refused(monkeypatch, capsys, "knn", "--weights", str(run), *FITTING, "--data", str(synthetic_root),
                   "--out", str(tmp_path / "knn"), "--device", "cpu")  # fmt: skip
    assert line == (f"error: weights path {run} is a directory; give the file inside it, "
                    f"e.g. {run / 'backbone.pth'}")  # fmt: skip
    assert tree(tmp_path) == ["run"]


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_pretrain_data_holding_train_and_val(monkeypatch, capsys, synthetic_root, tmp_path, dry_run):
    line = refused(monkeypatch, capsys, "pretrain", "--config", "demo", "--data", str(synthetic_root),
                   "--out", str(tmp_path / "run"), "--device", "cpu", *dry_run)  # fmt: skip
    assert line == (f"error: --data {synthetic_root} holds train/ and val/: pretraining would learn from the "
                    f"validation images too; give --data {synthetic_root / 'train'}")  # fmt: skip
    assert tree(tmp_path) == []


@pytest.mark.usefixtures("no_compute")
def test_pretrain_out_that_is_a_file(monkeypatch, capsys, synthetic_root, tmp_path):
    file = tmp_path / "taken.txt"
    file.write_text("keep")
    data = synthetic_root / "train"
    line = refused(monkeypatch, capsys, "pretrain", "--config", "demo", "--data", str(data),
                   "--out", str(file), "--device", "cpu")  # fmt: skip
    assert line == f"error: --out {file} is a file, not a folder: choose another --out"
    assert file.read_text() == "keep" and tree(tmp_path) == ["taken.txt"]


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_export_into_a_directory(monkeypatch, capsys, tmp_path, dry_run):
    folder = tmp_path / "exported"
    folder.mkdir()
    line = refused(monkeypatch, capsys, "export", "--out", str(folder), "--weights", "random",
                   "--backbone", "resnet18", "--to", "detectron2", *dry_run)  # fmt: skip
    assert line == (f"error: --out {folder} is a directory; give the file to write inside it, "
                    f"e.g. {folder / 'backbone_detectron2.pkl'}")  # fmt: skip
    assert tree(tmp_path) == ["exported"]


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize("protocol", ["knn", "linear", "semi"])
def test_images_far_smaller_than_the_view_are_named_with_the_flags_that_fit(
    monkeypatch, capsys, synthetic_root, tmp_path, protocol
):
    extra = {"knn": [], "linear": ["--lr", "0.1"], "semi": ["--percent", "10"]}[protocol]
    code, err = vicregl(monkeypatch, capsys, protocol, *RANDOM, "--data", str(synthetic_root), *extra,
                        "--out", str(tmp_path / "out"), "--dry-run")  # fmt: skip
    assert code == 0, err
    assert (f"{protocol}: images are about 40 px, far smaller than the 224 px view (short side to 256): "
            "upsampled 6.4x their features may score near chance; for images this size give "
            "--image-size 40 --resize 40") in err.splitlines()  # fmt: skip
    code, err = vicregl(monkeypatch, capsys, protocol, *RANDOM, "--data", str(synthetic_root), *extra,
                        "--out", str(tmp_path / "out"), "--dry-run", "--image-size", "40", "--resize", "40")
    assert code == 0 and "far smaller" not in err, err
    assert tree(tmp_path) == []


@pytest.mark.usefixtures("no_compute")
def test_svm_images_far_smaller_than_the_view(monkeypatch, capsys, tmp_path_factory, tmp_path):
    voc = tmp_path_factory.mktemp("voc")
    generate(voc, num_train=36, num_val=24, image_size=32, seed=0, workers=1)  # 2-fold CV needs 36 images
    code, err = vicregl(monkeypatch, capsys, "svm", *RANDOM, "--data", str(voc / "VOC2012"), "--folds", "2",
                        "--out", str(tmp_path / "svm"), "--dry-run")  # fmt: skip
    assert code == 0, err
    assert "svm: images are about 32 px, far smaller than the 224 px view" in err
    assert "--image-size 32 --resize 32" in err and tree(tmp_path) == []


def test_an_unreadable_image_in_a_loader_worker_is_one_line(monkeypatch, capsys, tmp_path):
    data = tmp_path / "data"
    noise = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (data / split / label).mkdir(parents=True)
            for index in range(2):
                pixels = torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8, generator=noise).numpy()
                Image.fromarray(pixels).save(data / split / label / f"{index}.jpg")
    broken = data / "train" / "b" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # truncated: its header still reads
    code, err = vicregl(monkeypatch, capsys, "knn", *RANDOM, "--data", str(data),
                        "--out", str(tmp_path / "knn"), "--k", "1", "--image-size", "32", "--resize", "36",
                        "--no-cache", "--workers", "1")  # fmt: skip
    lines = [line for line in err.strip().splitlines() if line.startswith("error")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: cannot read image {broken} (") and lines[0].endswith(
        "): replace or remove the file"
    )
