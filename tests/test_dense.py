"""Dense protocols with known answers: perfect features give mIoU 100 (retrieval and k-means), the retrieval
equals a per-patch loop, the class-balanced sampling prefers rare classes, Hungarian matching is optimal;
the command plans without writing and runs end to end on synthetic VOC."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from typer.testing import CliRunner

from vicregl_cli.backbones import build_backbone
from vicregl_cli.cli import app
from vicregl_cli.dense.features import build_options, fuse_batchnorm, patch_features, stage_stride
from vicregl_cli.dense.kmeans import cluster, clustering_iou
from vicregl_cli.dense.memory import Memory, balanced_patches, patch_histograms
from vicregl_cli.dense.metrics import class_iou, confusion, hungarian_mapping, iou_matrix, miou_metrics
from vicregl_cli.dense.retrieval import retrieve, upsample_argmax

torch.set_num_threads(1)
GRID, PATCH, CLASSES = 4, 8, 5
SIZE = GRID * PATCH


def stripe_masks(images: int, seed: int) -> torch.Tensor:
    """(images, SIZE, SIZE) masks of patch-wide vertical stripes, one random class per stripe (every class
    present): bilinear upsampling of exact patch scores then gives back every pixel."""
    generator = torch.Generator().manual_seed(seed)
    stripes = torch.randint(0, CLASSES, (images, GRID), generator=generator)
    present = min(CLASSES, stripes.numel())
    stripes.view(-1)[:present] = torch.arange(present)
    return stripes.repeat_interleave(PATCH, dim=1)[:, None, :].expand(-1, SIZE, -1).contiguous()


def patch_labels(masks: torch.Tensor) -> torch.Tensor:
    """(B, GRID²) label of each (pure) patch, row-major."""
    return masks[:, PATCH // 2 :: PATCH, PATCH // 2 :: PATCH].flatten(1)


def retrieval_iou(memory_features, memory_masks, query_features, query_masks, **options) -> list[float]:
    """IoU per class (Hungarian) of the retrieval pipeline (memory of every patch) on given features."""
    memory = Memory([], [])
    memory.add(memory_features, patch_histograms(memory_masks, GRID, CLASSES), None)
    features, labels = memory.tensors()
    scores = retrieve(query_features.flatten(0, 1), features, labels, k=options.get("k", 30),
                      temperature=0.02, query_chunk=7, memory_chunk=11)  # fmt: skip
    predicted = upsample_argmax(scores.view(*query_features.shape[:2], -1), GRID, SIZE)
    counts = confusion(query_masks, predicted, CLASSES, CLASSES)
    return list(miou_metrics(counts, [str(c) for c in range(CLASSES)])[1]["hungarian"].values())


def test_one_hot_patch_features_give_miou_100_in_retrieval():
    train, val = stripe_masks(6, seed=0), stripe_masks(3, seed=1)
    one_hot = torch.nn.functional.one_hot
    iou = retrieval_iou(one_hot(patch_labels(train), CLASSES).float(), train,
                        one_hot(patch_labels(val), CLASSES).float(), val)  # fmt: skip
    assert iou == pytest.approx([100.0] * CLASSES)


def test_one_hot_patch_features_give_miou_100_in_kmeans():
    masks = stripe_masks(4, seed=2)
    masks[:, : SIZE // 2] = torch.flip(masks[:, : SIZE // 2], dims=[2])  # patches need not be stripes here
    labels = patch_labels(masks)
    features = torch.nn.functional.one_hot(labels, CLASSES).float()
    assignments = cluster(features.flatten(0, 1), CLASSES, seed=0, iterations=50)
    iou = clustering_iou(assignments.view(labels.shape), masks, GRID, CLASSES, CLASSES)
    assert iou.mean() == pytest.approx(1.0)
    overclustered = clustering_iou(torch.arange(labels.numel()).view(labels.shape), masks, GRID, CLASSES,
                                   labels.numel())  # fmt: skip
    assert overclustered.mean() == pytest.approx(1.0)  # one cluster per patch, mapped by majority


def test_memory_of_one_image_retrieves_itself():
    masks = stripe_masks(1, seed=3)  # classes 0..3 present; class 4 absent scores 0 (the reference's mean)
    features = torch.randn(1, GRID**2, 64, generator=torch.Generator().manual_seed(0))
    for k in (30, 1):
        assert retrieval_iou(features, masks, features, masks, k=k) == pytest.approx([100.0] * 4 + [0.0])


def test_retrieval_equals_a_per_patch_loop():
    generator = torch.Generator().manual_seed(4)
    memory_features = torch.nn.functional.normalize(torch.randn(50, 8, generator=generator), dim=1)
    memory_labels = torch.rand(50, 4, generator=generator)
    queries = torch.randn(20, 8, generator=generator) * 3
    expected = torch.zeros(20, 4, dtype=torch.float64)
    for q in range(20):
        query = queries[q].double() / queries[q].double().norm()
        cosines = [float(query @ memory_features[n].double()) for n in range(50)]
        nearest = sorted(range(50), key=lambda n: -cosines[n])[:5]
        exponentials = [np.exp(cosines[n] / 0.02 - cosines[nearest[0]] / 0.02) for n in nearest]
        for n, weight in zip(nearest, exponentials, strict=True):
            expected[q] += weight / sum(exponentials) * memory_labels[n].double()
    got = retrieve(queries, memory_features, memory_labels, k=5, temperature=0.02, query_chunk=6,
                   memory_chunk=9)  # fmt: skip
    assert torch.allclose(got.double(), expected, atol=1e-6)


def test_patch_histograms_count_ignore_as_background():
    masks = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    masks[0, :PATCH, :PATCH // 2] = 3
    masks[0, :PATCH, PATCH // 2 : PATCH] = 255
    histograms = patch_histograms(masks, GRID, CLASSES)
    assert histograms.shape == (1, GRID**2, CLASSES)
    assert histograms[0, 0].tolist() == [0.5, 0, 0, 0.5, 0]
    assert histograms[0, 1:].sum(dim=1).tolist() == [1.0] * (GRID**2 - 1)
    assert torch.all(histograms[0, 1:, 0] == 1)


def test_class_balanced_sampling_picks_the_rare_class_first():
    grid, patch = 8, 4
    masks = torch.ones(1, grid * patch, grid * patch, dtype=torch.long)  # class 1 in 62 patches
    rare = [9, 42]
    for index in rare:
        row, column = divmod(index, grid)
        masks[0, row * patch : (row + 1) * patch, column * patch : (column + 1) * patch] = 2
    histograms = patch_histograms(masks, grid, 3)
    for seed in range(20):
        picked = balanced_patches(histograms, 16, torch.Generator().manual_seed(seed))[0].tolist()
        assert set(rare) <= set(picked), seed  # a uniform choice of 16 of 64 would keep each with p 1/4
        # the rule written out: score = Σ over the patch's classes of the image's patches holding it × U(0, 1)
        uniform = torch.rand(grid**2, generator=torch.Generator().manual_seed(seed))
        scores = [(2.0 if index in rare else 62.0) * float(uniform[index]) for index in range(grid**2)]
        assert sorted(picked) == sorted(sorted(range(grid**2), key=lambda i: scores[i])[:16])


def test_hungarian_matching_is_the_optimal_assignment():
    counts = torch.tensor([[5, 40, 2, 0], [30, 1, 0, 9], [0, 3, 25, 4], [8, 0, 6, 20]])
    mapping = hungarian_mapping(counts)
    iou = iou_matrix(counts)
    rows, columns = linear_sum_assignment(-iou)
    assert mapping[columns].tolist() == rows.tolist()
    best = max(itertools.permutations(range(4)), key=lambda p: sum(iou[p[c], c] for c in range(4)))
    assert mapping.tolist() == list(best)
    matched = class_iou(counts, mapping)
    assert matched.tolist() == pytest.approx([iou[mapping[c], c] for c in np.argsort(mapping)])
    identity = class_iou(counts, None)
    assert identity[0] == pytest.approx(5 / (counts[0].sum() + counts[:, 0].sum() - 5).item())


def test_identity_miou_ignores_extra_predicted_classes_and_255():
    truth = torch.tensor([[0, 0, 1, 255]])
    predicted = torch.tensor([[0, 2, 1, 1]])
    counts = confusion(truth, predicted, 2, 3)
    assert counts.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert class_iou(counts, None).tolist() == pytest.approx([0.5, 1.0])


@pytest.mark.parametrize("name", ["resnet10_small_w16", "resnet50"])
def test_batchnorm_folding_keeps_the_features(name):
    model = build_backbone(name).eval()
    generator = torch.Generator().manual_seed(5)
    for norm in model.modules():  # statistics and affine terms far from the identity
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.normal_(generator=generator)
            norm.running_var.uniform_(0.5, 2.0, generator=generator)
            norm.weight.data.uniform_(0.5, 1.5, generator=generator)
            norm.bias.data.normal_(generator=generator)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    expected = patch_features(model, images, 4)
    fused = fuse_batchnorm(model)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in fused.modules())
    got = patch_features(fused, images, 4)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize(("name", "stage", "dilate", "stride"), [
    ("resnet10_small_w16", 4, False, 8), ("resnet10_small_w16", 2, False, 2), ("resnet50", 4, False, 32),
    ("resnet50", 4, True, 8), ("resnet50", 2, True, 8), ("convnext_tiny", 3, False, 16),
])  # fmt: skip
def test_stage_stride_is_the_feature_map_stride(name, stage, dilate, stride):
    assert stage_stride(name, stage, dilate) == stride
    model = build_backbone(name, **build_options(name, dilate)).eval()
    features = patch_features(model, torch.zeros(1, 3, 64, 64), stage)
    assert features.shape[:2] == (1, (64 // stride) ** 2)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    from vicregl_cli.data.synthetic import generate

    root = tmp_path_factory.mktemp("dense")
    generate(root, num_train=12, num_val=12, image_size=48, seed=0, workers=1)
    return root / "VOC2012"


def invoke(*arguments: str):
    base = ["dense", "--weights", "random", "--backbone", "resnet10_small_w16", "--dataset", "voc",
            "--input-size", "48", "--workers", "0", "--batch-size", "4", "--bn-batches", "1",
            "--device", "cpu"]  # fmt: skip
    return CliRunner().invoke(app, [*base, *arguments], terminal_width=200)


def test_dry_run_plans_and_writes_nothing(voc, tmp_path):
    out = tmp_path / "out"
    result = invoke("--data", str(voc), "--out", str(out), "--memory-size", "64", "all", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "retrieval_memory=64" in result.output and "retrieval_memory=all" in result.output
    assert not out.exists()
    bad = invoke("--data", str(voc), "--out", str(out), "--input-size", "44", "--dry-run")
    assert bad.exit_code != 0 and "multiple of the stage's stride 8" in str(bad.exception)
    small = invoke("--data", str(voc), "--out", str(out), "--memory-size", "8", "--dry-run")
    assert "smaller than the 12 training images × 2 passes" in str(small.exception)


def test_end_to_end_writes_results(voc, tmp_path):
    out = tmp_path / "out"
    result = invoke("--data", str(voc), "--out", str(out), "--memory-size", "48")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    record = json.loads((out / "retrieval_memory=48" / "result.json").read_text())
    assert record["protocol"] == "dense-retrieval"
    assert record["params"]["patches_per_view"] == 2 and record["params"]["memory_entries"] == 48
    assert record["params"]["grid"] == 6 and record["params"]["k"] == 30
    assert 0 <= record["metrics"]["mIoU_identity"] <= record["metrics"]["mIoU"] + 1e-9 <= 100 + 1e-9
    per_class = json.loads((out / "retrieval_memory=48" / "per_class_iou.json").read_text())
    assert len(per_class["hungarian"]) == record["params"]["classes"]
    kmeans = invoke("--data", str(voc), "--out", str(tmp_path / "km"), "--protocol", "kmeans",
                    "--clusters", "20", "500")  # fmt: skip
    assert kmeans.exit_code == 0, f"{kmeans.output}\n{kmeans.exception!r}"
    metrics = json.loads((tmp_path / "km" / "kmeans" / "result.json").read_text())["metrics"]
    assert set(metrics) == {"mIoU", "mIoU@20", "mIoU@432"}  # 500 capped at 12 images × 36 patches
    assert all(0 <= value <= 100 for value in metrics.values())


def test_memory_views_are_seeded_per_image(voc):
    from vicregl_cli.data.readers import read_mask
    from vicregl_cli.dense.data import PairedImages
    from vicregl_cli.transfer.segment_plan import dataset_files

    pairs = dataset_files("voc", voc)[2][:3]
    first, again, other = (PairedImages(pairs, 40, seed) for seed in (1, 1, 2))
    plain = PairedImages(pairs, 40)
    for index in range(3):
        image, mask = first[index]
        assert image.shape == (3, 40, 40) and mask.shape == (40, 40)
        assert torch.equal(image, again[index][0]) and torch.equal(mask, again[index][1])
        assert not torch.equal(image, other[index][0])
        assert set(mask.unique().tolist()) <= set(np.unique(read_mask(pairs[index][1])).tolist())
    ade = PairedImages(pairs, 40, reduce_zero_label=True)
    shifted, original = ade[0][1], plain[0][1]
    assert torch.equal(shifted, torch.where((original == 0) | (original == 255), 255, original - 1))
