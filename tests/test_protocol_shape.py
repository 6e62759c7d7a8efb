"""One shape for every subcommand: the weights file is read once, every evaluation writes the same record,
--dry-run writes and submits nothing, and the SLURM options are the same everywhere."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vicregl_cli.backbones import build_backbone, save_backbone
from vicregl_cli.backbones import weights as weights_module
from vicregl_cli.cli import app

RECORD_KEYS = {
    "run", "protocol", "backbone", "weights", "dataset", "params", "metrics", "wall_time_s", "versions"
}  # fmt: skip
SMALL_IMAGES = ["--image-size", "32", "--resize", "36"]


@pytest.fixture(scope="module")
def shape_root(tmp_path_factory) -> Path:
    from vicregl_cli.data.synthetic import generate

    root = tmp_path_factory.mktemp("shape")
    generate(root, num_train=24, num_val=12, image_size=48, seed=0, workers=1)
    save_backbone(root / "r18.pth", "resnet18", build_backbone("resnet18").state_dict())
    return root


def commands(root: Path, out: Path) -> dict[str, list[str]]:
    """Every evaluation subcommand in its smallest setting on the synthetic data."""
    data, voc, weights = root / "classification", root / "VOC2012", root / "r18.pth"
    return {
        "knn": ["knn", "--weights", str(weights), "--data", str(data), "--out", str(out / "knn"), "--k", "3",
                *SMALL_IMAGES, "--workers", "0", "--no-cache"],
        "linear": ["linear", "--weights", str(weights), "--data", str(data), "--out", str(out / "linear"),
                   "--lr", "0.1", "0.3", "1", "--cached", "--epochs", "1", "--batch-size", "8", *SMALL_IMAGES,
                   "--workers", "0", "--no-cache"],
        "semi": ["semi", "--weights", str(weights), "--data", str(data), "--out", str(out / "semi"),
                 "--percent", "10", "--epochs", "1", "--batch-size", "8", *SMALL_IMAGES, "--workers", "0"],
        "svm": ["svm", "--weights", str(weights), "--data", str(voc), "--out", str(out / "svm"),
                *SMALL_IMAGES, "--workers", "0", "--no-cache", "--cost", "0.1,1", "--folds", "2",
                "--jobs", "1"],
        "segment": ["segment", "--weights", str(weights), "--dataset", "voc", "--data-root", str(voc),
                    "--out", str(out / "segment"), "--lr", "0.01", "--iters", "2", "--batch-size", "2",
                    "--crop-size", "32", "--workers", "0"],
        "detect": ["detect", "--weights", str(weights), "--dataset", "voc", "--data-root", str(voc),
                   "--out", str(out / "detect"), "--engine", "torchvision", "--lr", "0.01", "--iters", "2",
                   "--batch-size", "2", "--precise-bn-iters", "1", "--workers", "0"],
    }  # fmt: skip


def invoke(arguments: list[str]):
    result = CliRunner().invoke(app, [*arguments, "--device", "cpu"], terminal_width=200)
    assert result.exit_code == 0, f"{arguments[0]}: {result.output}\n{result.exception!r}"
    return result


def counting_reads(monkeypatch) -> list[Path]:
    """Patch the one reader of weights files; returns the list of paths it was asked to read."""
    reads: list[Path] = []
    original = weights_module.read_weights_file

    def counting(path):
        reads.append(Path(path))
        return original(path)

    monkeypatch.setattr(weights_module, "read_weights_file", counting)
    return reads


def test_every_evaluation_writes_records_of_one_schema(shape_root, tmp_path):
    sha256 = hashlib.sha256((shape_root / "r18.pth").read_bytes()).hexdigest()
    protocols = set()
    for name, arguments in commands(shape_root, tmp_path).items():
        invoke(arguments)
        files = sorted((tmp_path / name).rglob("result.json"))
        assert files, name
        assert (tmp_path / name / "summary.json").is_file()
        for file in files:
            record = json.loads(file.read_text())
            assert set(record) == RECORD_KEYS, (name, set(record) ^ RECORD_KEYS)
            assert record["run"] == file.parent.name and record["backbone"] == "resnet18"
            assert record["weights"] == {"path": str((shape_root / "r18.pth").resolve()), "sha256": sha256,
                                         "seed": None}  # fmt: skip
            assert record["metrics"] and all(isinstance(value, float) for value in record["metrics"].values())
            assert isinstance(record["params"], dict) and record["wall_time_s"] >= 0
            protocols.add(record["protocol"])
    expected = {
        "knn", "linear-cached", "semi", "svm", "segment-voc-linear-frozen", "detect-voc-faster-rcnn-c4"
    }  # fmt: skip
    assert expected <= protocols
    linear_runs = sorted(path.parent.name for path in (tmp_path / "linear").rglob("result.json"))
    assert linear_runs == ["cached_lr=0.1", "cached_lr=0.3", "cached_lr=1"]


@pytest.mark.parametrize(
    "name, extra",
    [
        ("linear", []),
        ("segment", ["--lr", "0.05", "--export-only"]),
        ("detect", ["--export-only"]),
    ],
)
def test_the_weights_file_is_read_once_per_command(shape_root, tmp_path, monkeypatch, name, extra):
    reads = counting_reads(monkeypatch)
    arguments = commands(shape_root, tmp_path)[name]
    weights = shape_root / "r18.pth"
    if name == "detect":  # detectron2's C4 configs take bottleneck ResNets only
        weights = tmp_path / "r50.pth"
        save_backbone(weights, "resnet50", build_backbone("resnet50").state_dict())
        arguments = [argument for argument in arguments if argument not in ("--engine", "torchvision")]
        arguments[arguments.index(str(shape_root / "r18.pth"))] = str(weights)
    invoke([*arguments, *extra])
    assert reads == [weights]


def tree(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


SUBCOMMANDS_THAT_WRITE = ["knn", "linear", "semi", "svm", "segment", "detect", "pretrain", "synth", "report"]


@pytest.mark.parametrize("name", SUBCOMMANDS_THAT_WRITE)
def test_dry_run_prints_the_plan_writes_nothing_and_is_quick(shape_root, tmp_path, name):
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.files import write_json_atomic
    from vicregl_cli.report import make_result

    out = tmp_path / "out"
    record = make_result("knn", resolve_weights("random", "resnet18"), "d", {}, {"top1@20": 1.0}, 1.0)
    write_json_atomic(tmp_path / "records" / "knn" / "result.json", {"run": "knn", **record})
    if name == "pretrain":
        arguments = ["pretrain", "--data", str(shape_root / "classification" / "train"), "--out", str(out),
                     "--backbone", "resnet18", "--crop-sizes", "64", "--batch-size", "4", "--mlp", "32-32",
                     "--maps-mlp", "16-16", "--num-matches", "2,2", "--epochs", "1", "--warmup-epochs", "0",
                     "--num-workers", "0"]  # fmt: skip
    elif name == "synth":
        arguments = ["synth", "--out", str(out), "--num-train", "24", "--num-val", "12"]
    elif name == "report":
        arguments = ["report", str(tmp_path / "records"), "--format", "csv", "--output", str(out / "t.csv")]
    else:
        arguments = commands(shape_root, out)[name]
    before = tree(shape_root), tree(tmp_path)
    result = CliRunner().invoke(app, [*arguments, "--dry-run"], terminal_width=200)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert "dry run" in result.output and "nothing was" in result.output
    assert (tree(shape_root), tree(tmp_path)) == before
    if name in ("knn", "linear", "semi", "svm", "segment", "detect"):
        sha256 = hashlib.sha256((shape_root / "r18.pth").read_bytes()).hexdigest()
        assert sha256 in result.output and "to do" in result.output


@pytest.mark.parametrize("name", ["pretrain", "linear"])
def test_slurm_dry_run_prints_the_job_and_submits_nothing(shape_root, tmp_path, monkeypatch, name):
    import submitit

    def refuse(*args, **kwargs):
        raise AssertionError("--slurm --dry-run tried to submit")

    monkeypatch.setattr(submitit.AutoExecutor, "__init__", refuse)
    monkeypatch.setattr(submitit.AutoExecutor, "submit", refuse)
    if name == "pretrain":
        arguments = ["pretrain", "--config", "demo",
                     "--data", str(shape_root / "classification" / "train"), "--out", str(tmp_path / "run")]
    else:
        arguments = commands(shape_root, tmp_path)["linear"][:-3]  # not --cached: one job per lr
        arguments.remove("--cached")
    slurm = ["--slurm", "--partition", "gpu", "--nodes", "2", "--gpus-per-node", "4", "--time", "600",
             "--account", "ssl", "--qos", "high", "--mem-gb", "200", "--dry-run"]  # fmt: skip
    result = CliRunner().invoke(app, [*arguments, *slurm], terminal_width=200)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    printed = result.output
    assert "would submit" in printed and "'slurm_partition': 'gpu'" in printed
    for expected in ("'nodes': 2", "'gpus_per_node': 4", "'tasks_per_node': 4", "'timeout_min': 600",
                     "'slurm_account': 'ssl'", "'slurm_qos': 'high'", "'mem_gb': 200"):  # fmt: skip
        assert expected in printed, expected
    assert list(tmp_path.iterdir()) == []


def test_every_evaluation_has_the_same_run_options():
    shared = ["--device", "--dry-run", "--slurm", "--partition", "--nodes", "--gpus-per-node",
              "--cpus-per-task", "--time", "--account", "--qos", "--mem-gb", "--slurm-cluster"]  # fmt: skip
    for name in ("pretrain", "knn", "linear", "semi", "svm", "segment", "detect"):
        output = CliRunner().invoke(app, [name, "--help"], terminal_width=300).output
        missing = [option for option in shared if option not in output]
        assert not missing, (name, missing)


def test_a_small_stem_checkpoint_runs_knn_linear_segment_and_detect_refuses_it(shape_root, tmp_path):
    weights = tmp_path / "r18_small.pth"
    save_backbone(weights, "resnet18_small", build_backbone("resnet18_small").state_dict())
    for name, arguments in commands(shape_root, tmp_path).items():
        arguments[arguments.index(str(shape_root / "r18.pth"))] = str(weights)
        if name == "detect":
            result = CliRunner().invoke(app, [*arguments, "--device", "cpu"])
            assert result.exit_code != 0 and "small-input stem" in str(result.exception)
            continue
        if name == "semi":
            continue  # the same pooled-feature path as linear, at fine-tuning cost
        invoke(arguments)
        (file, *_) = sorted((tmp_path / name).rglob("result.json"))
        record = json.loads(file.read_text())
        assert record["backbone"] == "resnet18_small" and record["metrics"]
    config = (tmp_path / "segment" / "lr=0.01" / "config.py").read_text()
    assert "'output_stride': 8" in config or "output_stride=8" in config
