"""Weighted k-NN against a brute-force numpy reference; chunk sizes bound the similarity tiles."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from vicregl_cli.backbones import resolve_weights
from vicregl_cli.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from vicregl_cli.data.readers import image_folder
from vicregl_cli.evaluate import knn
from vicregl_cli.evaluate.features import eval_transform, frozen_extractor, train_transform
from vicregl_cli.evaluate.knn import knn_evaluate


def reference_knn(train, train_labels, queries, query_labels, k, temperature, num_classes):
    """One query at a time: every cosine similarity, a full sort, exp(cos/T) votes, rank of the true class."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    top1 = top5 = 0
    for query, label in zip(queries, query_labels, strict=True):
        similarities = train @ query
        order = np.argsort(-similarities, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for index in order:
            votes[train_labels[index]] += np.exp(similarities[index] / temperature)
        ranking = np.argsort(-votes, kind="stable")
        position = int(np.nonzero(ranking == label)[0][0])
        if votes[label] > 0:
            top1 += position == 0
            top5 += position < 5
    return 100.0 * top1 / len(queries), 100.0 * top5 / len(queries)


@pytest.mark.parametrize(
    ("num_classes", "ks", "temperature", "chunk", "train_chunk"),
    [
        (3, [1, 5, 20], 0.07, 7, None),
        (10, [3, 10, 50], 0.5, 64, 37),
        (40, [20, 200], 0.07, 16, 50),
    ],
)
def test_knn_matches_brute_force_reference(num_classes, ks, temperature, chunk, train_chunk):
    generator = np.random.default_rng(num_classes)
    dim = 16
    centres = generator.normal(size=(num_classes, dim))
    train_labels = generator.integers(0, num_classes, size=300)
    train_labels[:num_classes] = np.arange(num_classes)
    # the last class never appears among the queries: it must still receive votes
    query_labels = generator.integers(0, num_classes - 1, size=90)
    train = centres[train_labels] + 1.5 * generator.normal(size=(300, dim))
    queries = centres[query_labels] + 1.5 * generator.normal(size=(90, dim))
    metrics = knn_evaluate(
        torch.tensor(train, dtype=torch.float64),
        torch.tensor(train_labels),
        torch.tensor(queries, dtype=torch.float64),
        torch.tensor(query_labels),
        ks,
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk,
        train_chunk_size=train_chunk,
        show_progress=False,
    )
    assert sorted(metrics) == sorted(f"top{n}@{k}" for k in ks for n in (1, 5))
    for k in ks:
        top1, top5 = reference_knn(train, train_labels, queries, query_labels, k, temperature, num_classes)
        assert metrics[f"top1@{k}"] == pytest.approx(top1), k
        assert metrics[f"top5@{k}"] == pytest.approx(top5), k
    assert 0 < metrics[f"top1@{ks[0]}"] < 100  # the data is neither trivial nor hopeless


def test_similarity_tiles_never_exceed_the_chunk_sizes(monkeypatch):
    shapes = []
    original = knn._similarity

    def spy(queries, train_block, inverse_norms):
        shapes.append(tuple(queries.shape[:1]) + tuple(train_block.shape[:1]))
        return original(queries, train_block, inverse_norms)

    monkeypatch.setattr(knn, "_similarity", spy)
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(1000, 8, generator=generator)
    labels = torch.randint(0, 5, (1000,), generator=generator)
    queries = torch.randn(250, 8, generator=generator)
    query_labels = torch.randint(0, 5, (250,), generator=generator)
    chunked = knn_evaluate(
        train,
        labels,
        queries,
        query_labels,
        [10, 100],
        chunk_size=32,
        train_chunk_size=300,
        show_progress=False,
    )
    assert max(rows for rows, _ in shapes) == 32 and max(cols for _, cols in shapes) == 300
    assert sum(rows * cols for rows, cols in shapes) == 250 * 1000  # every pair seen exactly once
    whole = knn_evaluate(train, labels, queries, query_labels, [10, 100], chunk_size=250, show_progress=False)
    assert chunked == whole


def test_k_larger_than_the_train_set_is_clamped_with_a_warning():
    train = torch.randn(12, 4)
    labels = torch.arange(12) % 3
    with pytest.warns(UserWarning, match="k=200 is larger than the train set"):
        metrics = knn_evaluate(train, labels, train, labels, [5, 200], show_progress=False)
    assert set(metrics) == {"top1@5", "top5@5", "top1@12", "top5@12"}
    assert metrics["top5@12"] == 100.0  # three classes, all voted for


# Frozen features: eval-mode extraction, BatchNorm re-estimation, the cache, the sharded gather.


class TinyBackbone(torch.nn.Module):
    """conv + BatchNorm + pooling: the backbone contract (.spec, forward -> (map, pooled)) at toy size."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)
        self.bn = torch.nn.BatchNorm2d(6)
        self.spec = type("Spec", (), {"representation_size": 6, "name": "tiny"})()

    def forward(self, images):
        feature_map = self.bn(self.conv(images)).relu()
        return feature_map, feature_map.mean(dim=(2, 3))


class ImageTensors(torch.utils.data.Dataset):
    def __init__(self, count, seed=0):
        self.images = torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 + 1
        self.targets = [index % 3 for index in range(count)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.targets[index]


def test_frozen_extraction_leaves_batchnorm_buffers_bit_identical():
    from vicregl_cli.evaluate.features import extract_features

    model = TinyBackbone()
    model.bn.running_mean.uniform_(-1, 1)
    model.train()  # extraction must switch to eval mode itself
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    features = extract_features(model, ImageTensors(10), batch_size=4)
    assert features.shape == (10, 6)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(features, model(ImageTensors(10).images)[1])


def test_batchnorm_re_estimation_averages_the_batch_statistics():
    from vicregl_cli.evaluate.features import recalibrate_batchnorm

    model = TinyBackbone()
    dataset = ImageTensors(12)
    used = recalibrate_batchnorm(model, dataset, num_batches=2, batch_size=4, seed=5)
    assert used == 8 and not model.training and model.bn.momentum == 0.1
    order = torch.randperm(12, generator=torch.Generator().manual_seed(5))[:8]
    with torch.no_grad():
        maps = [model.conv(dataset.images[order[start : start + 4]]) for start in (0, 4)]
    means = torch.stack([batch.mean(dim=(0, 2, 3)) for batch in maps]).mean(dim=0)
    variances = torch.stack([batch.transpose(0, 1).flatten(1).var(dim=1) for batch in maps]).mean(dim=0)
    torch.testing.assert_close(model.bn.running_mean, means)
    torch.testing.assert_close(model.bn.running_var, variances)


def test_a_cache_hit_extracts_nothing(synthetic_root, tmp_path, monkeypatch):
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.data.readers import image_folder
    from vicregl_cli.evaluate import features as features_module
    from vicregl_cli.evaluate.features import eval_transform, frozen_extractor

    calls = []
    original = features_module.extract_features

    def counting(*args, **kwargs):
        calls.append(kwargs.get("description"))
        return original(*args, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", counting)
    train = image_folder(synthetic_root / "train", eval_transform(36, 32))

    def extractor(seed=0):
        return frozen_extractor(
            resolve_weights("random", "resnet18", seed), device=torch.device("cpu"), batch_size=16, resize=36,
            crop=32, cache_dir=tmp_path, bn_dataset=train, bn_batches=1,
        )  # fmt: skip

    first, labels = extractor().features(train, "train")
    assert calls == ["train"]
    again = extractor()
    second, _ = again.features(train, "train")
    assert calls == ["train"] and again.extractions == 0
    assert torch.equal(first, second) and torch.equal(labels, torch.tensor(train.targets))
    extractor(seed=1).features(train, "train")  # another random init is another cache entry
    assert calls == ["train", "train"]


def test_views_resize_bicubic_and_the_cache_key_records_it(synthetic_root, tmp_path):
    bicubic = transforms.InterpolationMode.BICUBIC
    assert eval_transform().transforms[0].interpolation == bicubic  # Resize(256)
    assert train_transform().transforms[0].interpolation == transforms.InterpolationMode.BILINEAR  # crop
    train = image_folder(synthetic_root / "train", eval_transform(36, 32))
    bilinear = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32), transforms.ToTensor(),
                                   transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])  # fmt: skip
    with Image.open(train.samples[0][0]) as image:
        assert not torch.allclose(train.transform(image.convert("RGB")), bilinear(image.convert("RGB")))
    extractor = frozen_extractor(resolve_weights("random", "resnet18"), device=torch.device("cpu"),
                                 batch_size=16, resize=36, crop=32, cache_dir=tmp_path, bn_dataset=train,
                                 bn_batches=1)  # fmt: skip
    transform = extractor.identity["transform"]
    assert transform["interpolation"] == "bicubic"
    old = {**extractor.identity, "transform": {**transform, "interpolation": "bilinear"}}  # an older cache
    assert extractor.cache_path(train) != dataclasses.replace(extractor, identity=old).cache_path(train)


def test_knn_end_to_end_on_synthetic_images(synthetic_root, tmp_path):
    import json

    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.evaluate.knn import KnnConfig
    from vicregl_cli.sweep import run_protocol

    config = KnnConfig(
        data=synthetic_root, ks=(5, 500), image_size=32, resize=36, batch_size=16, num_workers=0,
        cache_dir=tmp_path / "cache", bn_batches=2, device="cpu",
    )  # fmt: skip
    weights = resolve_weights("random", "resnet18")
    with pytest.warns(UserWarning, match="k=500"):
        (record,) = run_protocol(knn, config, weights, tmp_path / "out")
    stored = json.loads((tmp_path / "out" / "knn" / "result.json").read_text())
    assert stored["metrics"] == record["metrics"]
    assert set(record["metrics"]) == {"top1@5", "top5@5", "top1@36", "top5@36"}
    assert record["params"]["ks"] == [5, 36] and record["protocol"] == "knn"


def _gather_worker(rank, world, port, count, out_dir):
    import os

    import torch.distributed as dist

    from vicregl_cli.evaluate.features import extract_features

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    features = extract_features(TinyBackbone(), ImageTensors(count), batch_size=2)
    torch.save(features, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: 30-45 s on the shared 2 cores
def test_sharded_extraction_gathers_every_image_once_in_order(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    count = 7  # not divisible by the 2 ranks: shards of 4 and 3, no duplicates
    mp.start_processes(_gather_worker, args=(2, port, count, str(tmp_path)), nprocs=2, start_method="spawn")
    torch.manual_seed(0)
    model = TinyBackbone().eval()
    with torch.no_grad():
        expected = model(ImageTensors(count).images)[1]
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt"), expected)


def test_bad_input_fails_before_any_extraction(tmp_path, monkeypatch):
    from PIL import Image

    from vicregl_cli.backbones import build_backbone, resolve_weights, save_backbone
    from vicregl_cli.errors import UserError
    from vicregl_cli.evaluate import features as features_module
    from vicregl_cli.evaluate.knn import KnnConfig
    from vicregl_cli.sweep import run_protocol

    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction started")

    monkeypatch.setattr(features_module, "extract_features", no_extraction)
    for split, classes in (("train", ("a", "b")), ("val", ("a", "c"))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "x.png")
    weights = tmp_path / "r18.pth"
    save_backbone(weights, "resnet18", build_backbone("resnet18").state_dict())
    config = KnnConfig(data=tmp_path, ks=(1,), device="cpu", num_workers=0)
    with pytest.raises(UserError, match="different classes"):
        run_protocol(knn, config, resolve_weights(weights), tmp_path / "out")
    (tmp_path / "val" / "c").rename(tmp_path / "val" / "b")
    with pytest.raises(UserError, match="resnet18"):
        run_protocol(knn, config, resolve_weights(weights, "resnet34"), tmp_path / "out")
    with pytest.raises(UserError, match="--backbone"):
        run_protocol(knn, config, resolve_weights("random"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
