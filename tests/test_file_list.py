"""The array-backed pretraining file list: the same (path, label) sequence as torchvision's ImageFolder, and
its cache (hit, miss, invalidation when a file or a class folder is added or removed)."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from vicregl_cli.data import file_list_cache
from vicregl_cli.data.file_list import FileListDataset, list_image_folder
from vicregl_cli.data.file_list_cache import cache_path, load_or_list
from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.config import PretrainConfig
from vicregl_cli.pretrain.plan import dry_run, plan_run

torch.set_num_threads(1)

# every spelling ImageFolder has to sort, filter and recurse through
TREE = [
    "b_cls/img_10.jpg", "b_cls/img_2.JPEG", "b_cls/notes.txt", "b_cls/z_sub/deeper/x.png",
    "b_cls/a_sub/y.webp",
    "a_cls/é_accent.jpeg", "a_cls/0.bmp", "a_cls/.hidden.jpg", "C_upper/only.tif",
    "top_level_file.jpg",
]  # fmt: skip


def make_tree(root: Path, names: list[str] = TREE) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return root


def age_folders(root: Path, seconds: float = 3600.0) -> None:
    """Set every folder's modification time `seconds` into the past (as a data root that has settled)."""
    past = time.time() - seconds
    for directory, _, _ in os.walk(root):
        os.utime(directory, (past, past))


def listed(files) -> list[tuple[str, int]]:
    return [files[index] for index in range(len(files))]


def test_listing_is_torchvision_image_folder_sequence(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "linked").symlink_to(root / "a_cls", target_is_directory=True)  # followed, as ImageFolder does
    files = list_image_folder(root)
    reference = ImageFolder(str(root), allow_empty=True)
    assert files.classes == reference.classes == ["C_upper", "a_cls", "b_cls", "linked"]
    assert listed(files) == reference.samples
    assert len(files) == 11
    assert files.labels.dtype == np.int64 and files.offsets[-1] == files.relative.size
    assert files[2] == (str(root / "a_cls" / "0.bmp"), 1)  # sorted by code point: '.' < '0' < 'é'
    assert files[1] == (str(root / "a_cls" / ".hidden.jpg"), 1)
    # one folder time per walked folder: the root, 4 classes, b_cls's 3 sub-folders, linked's none
    assert files.folders == ["", "C_upper", "a_cls", "b_cls", "b_cls/a_sub", "b_cls/z_sub",
                             "b_cls/z_sub/deeper", "linked"]  # fmt: skip


def test_dataset_items_are_image_folder_items(tmp_path):
    rng = np.random.default_rng(0)
    for index, name in enumerate(["cat/a.png", "cat/b.png", "dog/c.png"]):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (5 + index, 7, 3), dtype=np.uint8)).save(tmp_path / name)
    ours, reference = FileListDataset(list_image_folder(tmp_path)), ImageFolder(str(tmp_path))
    assert ours.classes == reference.classes and len(ours) == len(reference) == 3
    for index in range(3):
        (image, label), (expected_image, expected_label) = ours[index], reference[index]
        assert label == expected_label
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected_image))


def test_listing_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list_image_folder(tmp_path / "missing")
    with pytest.raises(UserError, match="no class folders"):
        list_image_folder(make_tree(tmp_path / "flat", ["a.jpg"]))
    with pytest.raises(UserError, match="without images: empty"):
        list_image_folder(make_tree(tmp_path / "one", ["full/a.jpg", "empty/readme.txt"]))


def test_cache_hit_reuses_the_listing_without_walking(tmp_path, monkeypatch):
    root, cache = make_tree(tmp_path / "data"), tmp_path / "cache"
    age_folders(root)
    first, hit = load_or_list(root, cache)
    assert not hit and cache_path(root, cache).is_file()
    monkeypatch.setattr(file_list_cache, "list_image_folder", lambda root: pytest.fail("walked on a hit"))
    second, hit = load_or_list(root, cache)
    assert hit and listed(second) == listed(first) and second.classes == first.classes
    relative, hit = load_or_list(os.path.relpath(root), cache)  # the key is the absolute path
    assert hit and listed(relative) == [(os.path.relpath(path), label) for path, label in listed(first)]


@pytest.mark.parametrize(
    "change",
    ["add_file", "add_nested_file", "remove_file", "add_class", "rename_class"],
)
def test_cache_is_invalidated_when_the_root_changes(tmp_path, change):
    root, cache = make_tree(tmp_path / "data"), tmp_path / "cache"
    age_folders(root)
    load_or_list(root, cache)
    if change == "add_file":
        (root / "a_cls" / "new.jpg").touch()
    elif change == "add_nested_file":
        (root / "b_cls" / "z_sub" / "deeper" / "new.jpg").touch()
    elif change == "remove_file":
        (root / "b_cls" / "img_10.jpg").unlink()
    elif change == "add_class":
        make_tree(root, ["a_new_class/new.jpg"])
    else:
        (root / "C_upper").rename(root / "D_upper")
    files, hit = load_or_list(root, cache)
    assert not hit
    assert listed(files) == ImageFolder(str(root), allow_empty=True).samples
    age_folders(root)
    assert load_or_list(root, cache)[1] is False  # the changed folders' new times: one more listing, cached
    assert load_or_list(root, cache)[1] is True


def test_a_fresh_listing_is_not_cached_and_a_broken_cache_is_ignored(tmp_path):
    root, cache = make_tree(tmp_path / "data"), tmp_path / "cache"
    files, hit = load_or_list(root, cache)  # folders written just now: within the racy window
    assert not hit and not cache_path(root, cache).exists()
    age_folders(root)
    load_or_list(root, cache, write=False)
    assert not cache_path(root, cache).exists()
    cache_path(root, cache).parent.mkdir(parents=True)
    cache_path(root, cache).write_bytes(b"not an npz file")
    again, hit = load_or_list(root, cache)
    assert not hit and listed(again) == listed(files)
    assert load_or_list(root, cache)[1] is True  # the broken file was replaced


def test_cache_of_another_root_is_not_used(tmp_path):
    first, second, cache = make_tree(tmp_path / "one"), make_tree(tmp_path / "two", ["x/1.jpg"]), tmp_path
    age_folders(first)
    age_folders(second)
    load_or_list(first, cache)
    cache_path(first, cache).rename(cache_path(second, cache))  # the right name, another root's content
    files, hit = load_or_list(second, cache)
    assert not hit and listed(files) == [(str(second / "x" / "1.jpg"), 0)]


def test_plan_lists_through_the_cache_in_the_run_folder(tmp_path):
    root = make_tree(tmp_path / "data", [f"c{label}/{index}.jpg" for label in range(2) for index in range(3)])
    age_folders(root)
    config = PretrainConfig(data=str(root), out=str(tmp_path / "run"), batch_size=4, backbone="resnet18")
    plan = plan_run(config, "cpu")
    assert isinstance(plan.dataset.dataset, FileListDataset) and len(plan.dataset) == 6
    assert cache_path(root, tmp_path / "run").is_file()
    elsewhere = PretrainConfig(data=str(root), out=str(tmp_path / "run2"), cache_dir=str(tmp_path / "shared"),
                               batch_size=4, backbone="resnet18")  # fmt: skip
    plan_run(elsewhere, "cpu", write_cache=False)
    assert not (tmp_path / "shared").exists() and not (tmp_path / "run2").exists()
    plan_run(elsewhere, "cpu")
    assert cache_path(root, tmp_path / "shared").is_file() and not (tmp_path / "run2").exists()
    too_large = PretrainConfig(data=str(root), out=str(tmp_path / "run3"), batch_size=8, backbone="resnet18")
    with pytest.raises(UserError, match="fewer than one batch"):
        plan_run(too_large, "cpu")
    assert not (tmp_path / "run3").exists()  # a refused run writes nothing, not even the listing


def test_dry_run_writes_no_cache(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / f"c{label}").mkdir(parents=True)
        for index in range(2):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{label}/{index}.png")
    age_folders(root)
    config = PretrainConfig(data=str(root), out=str(tmp_path / "run"), batch_size=4,
                            backbone="resnet10_small_w16", mlp="16-16", maps_mlp="8-8", crop_sizes=[32],
                            num_matches=[4, 2])  # fmt: skip
    assert dry_run(config, "cpu")["images"] == 4
    assert not (tmp_path / "run").exists()


def test_an_unwritable_cache_folder_is_a_warning(tmp_path):
    root = make_tree(tmp_path / "data")
    age_folders(root)
    (tmp_path / "a_file").write_text("")
    with pytest.warns(UserWarning, match="was not cached"):
        files, hit = load_or_list(root, tmp_path / "a_file")
    assert not hit and listed(files) == ImageFolder(str(root), allow_empty=True).samples
