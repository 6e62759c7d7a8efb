# Pascal VOC 2012 + SBD augmented masks (train + aug = 10,582 images; val 1,449), mmseg's 40k schedule: the
# `voc12aug` setting of the VICRegL linear-segmentation and FCN tables. Needs SegmentationClassAug/ and
# ImageSets/Segmentation/aug.txt (mmseg's tools/dataset_converters/voc_aug.py writes both).
# Everything else (classes, crop, schedule, batch) as voc.py.
_base_ = ["voc.py"]
train_splits = [
    dict(
        img_path="JPEGImages", seg_map_path="SegmentationClass", ann_file="ImageSets/Segmentation/train.txt"
    ),
    dict(
        img_path="JPEGImages", seg_map_path="SegmentationClassAug", ann_file="ImageSets/Segmentation/aug.txt"
    ),
]
