"""`vicregl svm`: the per-class SVMs and chosen costs against a direct scikit-learn fit with the same folds,
the VOC classification AP on known answers, the devkit label reader and its errors, the synthetic lists."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import LinearSVC

from vicregl_cli.backbones import resolve_weights
from vicregl_cli.data.readers import parse_voc_xml
from vicregl_cli.data.scenes import CLASS_NAMES
from vicregl_cli.data.synthetic import generate
from vicregl_cli.data.voc_classification import read_classification_split, split_images
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate import svm
from vicregl_cli.evaluate.features import eval_transform, extractor_from_config
from vicregl_cli.evaluate.svm_fit import classification_ap, fit_svms, normalise, training_targets
from vicregl_cli.options import RunOptions
from vicregl_cli.report import read_results
from vicregl_cli.sweep import run_protocol


def reference_svm(cost: float) -> LinearSVC:
    """VISSL's LinearSVC, written out again (svm_trainer.py), seeded."""
    return LinearSVC(
        C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty="l2", loss="squared_hinge",
        dual=True, tol=0.0001, max_iter=2000, random_state=0,
    )  # fmt: skip


def reference_fit(features, devkit_column, costs, folds=3):
    """One class as VISSL fits it: labels 0 -> -1, fold AP per cost (explicit unshuffled stratified folds),
    first best cost, refit on everything. Returns (fold AP per cost, chosen cost, fitted SVM)."""
    targets = np.where(devkit_column == 1, 1, -1)
    fold_ap = []
    for cost in costs:
        scores = []
        for train_rows, val_rows in StratifiedKFold(folds).split(features, targets):
            model = reference_svm(cost).fit(features[train_rows], targets[train_rows])
            scores.append(
                average_precision_score(targets[val_rows], model.decision_function(features[val_rows]))
            )
        fold_ap.append(np.mean(scores))
        vissl_call = cross_val_score(
            reference_svm(cost), features, targets, cv=folds, scoring="average_precision"
        )
        assert np.isclose(vissl_call.mean(), fold_ap[-1], rtol=0, atol=1e-12)
    chosen = costs[int(np.argmax(fold_ap))]
    return np.array(fold_ap), chosen, reference_svm(chosen).fit(features, targets)


def clustered_problem(seed: int, samples: int, dim: int, classes: int):
    """Features with a class-dependent mean, multi-label devkit labels with some difficult (0) entries."""
    generator = np.random.default_rng(seed)
    present = generator.random((samples, classes)) < 0.3
    present[np.arange(classes * 3), np.repeat(np.arange(classes), 3)] = True
    centres = generator.normal(size=(classes, dim))
    features = np.abs(generator.normal(size=(samples, dim)) + present @ centres)
    labels = np.where(present, 1, -1).astype(np.int8)
    labels[generator.random(labels.shape) < 0.05] = 0
    return features, labels


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("jobs", [1, 2])
def test_fit_svms_equals_direct_sklearn_fit_with_the_same_folds(jobs):
    raw, labels = clustered_problem(seed=3, samples=90, dim=12, classes=3)
    costs = (0.01, 1.0, 100.0)
    features = raw / (np.linalg.norm(raw, axis=1, keepdims=True) + 1e-5)
    assert np.allclose(normalise(raw.astype(np.float32)), features, atol=1e-7)
    fit = fit_svms(features, labels, costs, folds=3, seed=0, jobs=jobs)
    for index in range(labels.shape[1]):
        fold_ap, chosen, model = reference_fit(features, labels[:, index], costs)
        np.testing.assert_allclose(fit.cv_ap[index], fold_ap, rtol=0, atol=1e-12)
        assert fit.chosen_costs[index] == chosen
        np.testing.assert_allclose(fit.coef[index], model.coef_[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(fit.intercept[index], model.intercept_[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            fit.decision(features)[:, index], model.decision_function(features), atol=1e-12
        )
    assert len(set(fit.chosen_costs)) > 1 or fit.cv_ap.std() > 0  # the grid actually matters here


def test_training_targets_treat_difficult_as_negative():
    assert training_targets(np.array([1, 0, -1, 1])).tolist() == [1, -1, -1, 1]


def test_classification_ap_known_answers():
    # ranked (difficult 0.95 dropped): +, -, +, -  ->  precision 1 up to recall 0.5, then 2/3 at recall 1
    labels = np.array([1, -1, 1, 0, -1])
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.1])
    assert classification_ap(labels, scores, use_07_metric=True) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert classification_ap(labels, scores, use_07_metric=False) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # a perfect ranking scores 1 however many negatives follow; the difficult image counts for nothing
    assert classification_ap(np.array([0, 1, 1, -1]), np.array([0.0, 3.0, 2.0, 1.0])) == pytest.approx(1.0)
    with pytest.raises(UserError, match="no positive"):
        classification_ap(np.array([-1, 0]), np.array([1.0, 2.0]))


def write_devkit(root: Path, split: str, rows: dict[str, list[int]], classes=("cat", "dog")) -> Path:
    """A small devkit: classes.txt, one label file per class, a JPEG per listed id."""
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    for column, name in enumerate(classes):
        (main / f"{name}_{split}.txt").write_text("".join(f"{i} {v[column]:2d}\n" for i, v in rows.items()))
    for image_id in rows:
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"")
    return root


def test_reader_orders_ids_and_keeps_devkit_labels(tmp_path):
    root = write_devkit(tmp_path / "voc", "trainval", {"000009": [1, 0], "000002": [-1, 1]})
    split = read_classification_split(root, "trainval")
    assert split.ids == ["000002", "000009"] and split.classes == ["cat", "dog"]
    assert split.labels.tolist() == [[-1, 1], [1, 0]]
    images = split_images(split)
    assert images.targets == [[-1, 1], [1, 0]]
    assert images.samples[1][0] == str(root / "JPEGImages" / "000009.jpg")


def test_reader_errors_name_the_file(tmp_path):
    root = write_devkit(tmp_path / "voc", "trainval", {"a": [1, -1], "b": [-1, 1]})
    with pytest.raises(UserError, match="lacks 2 class label file.*dog_test.txt.*splits.*trainval"):
        read_classification_split(root, "test")
    (root / "ImageSets" / "Main" / "dog_trainval.txt").write_text("a 1\nb 2\n")
    with pytest.raises(UserError, match=r"dog_trainval.txt:2: expected"):
        read_classification_split(root, "trainval")
    (root / "ImageSets" / "Main" / "dog_trainval.txt").write_text("a 1\nc -1\n")
    with pytest.raises(UserError, match="list different images"):
        read_classification_split(root, "trainval")
    (root / "ImageSets" / "Main" / "dog_trainval.txt").write_text("a 1\nb -1\n")
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) of split 'trainval' are missing: .*b.jpg"):
        read_classification_split(root, "trainval")


@pytest.fixture(scope="module")
def voc07(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, num_train=48, num_val=24, image_size=32, seed=0, workers=1)
    return out / "VOC2012"


def test_synthetic_label_files_follow_the_annotations(voc07):
    for split, name, count in (("train", "trainval", 48), ("val", "test", 24)):
        listed = (voc07 / "ImageSets" / "Main" / f"{name}.txt").read_text().split()
        assert listed == [f"{split}_{index:06d}" for index in range(count)]
        labels = read_classification_split(voc07, name)
        for row, image_id in enumerate(labels.ids):
            objects = parse_voc_xml(voc07 / "Annotations" / f"{image_id}.xml", CLASS_NAMES).labels
            expected = [1 if index in objects else -1 for index in range(len(CLASS_NAMES))]
            assert labels.labels[row].tolist() == expected


def test_plan_refuses_too_few_positives_before_extraction(voc07):
    weights = resolve_weights("random", "resnet10_small_w16", 0)
    with pytest.raises(UserError, match="fewer than 20 positive"):
        svm.plan(svm.SvmConfig(data=voc07, folds=20), weights)
    with pytest.raises(UserError, match="--cost needs distinct positive"):
        svm.plan(svm.SvmConfig(data=voc07, costs=(1.0, -1.0)), weights)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_svm_protocol_matches_direct_fit_on_the_same_features(voc07, tmp_path):
    weights = resolve_weights("random", "resnet10_small_w16", 0)
    config = svm.SvmConfig(
        data=voc07, costs=(0.1, 1.0, 10.0), image_size=32, resize=32, batch_size=24, num_workers=0,
        bn_batches=2, jobs=1, device="cpu",
    )  # fmt: skip
    run_protocol(svm, config, weights, tmp_path / "out", RunOptions(device="cpu"))
    record = read_results([tmp_path / "out" / "svm" / "result.json"])[0]
    detail = json.loads((tmp_path / "out" / "svm" / "per_class.json").read_text())
    train, test = (read_classification_split(voc07, name) for name in ("trainval", "test"))
    transform = eval_transform(32, 32)
    extractor = extractor_from_config(
        config, weights, torch.device("cpu"), split_images(train, transform)
    )
    train_features = normalise(extractor.features(split_images(train, transform))[0].numpy())
    test_features = normalise(extractor.features(split_images(test, transform))[0].numpy())
    aps = []
    for index, name in enumerate(train.classes):
        fold_ap, chosen, model = reference_fit(train_features, train.labels[:, index], list(config.costs))
        assert detail["classes"][name]["cost"] == chosen
        np.testing.assert_allclose(detail["classes"][name]["cv_ap"], fold_ap, atol=1e-9)
        aps.append(classification_ap(test.labels[:, index], model.decision_function(test_features)))
    assert record["metrics"]["mAP"] == pytest.approx(100 * np.mean(aps), abs=1e-9)
    assert 0 < record["metrics"]["mAP"] <= 100 and record["params"]["test_images"] == 24
