# Pascal VOC 2012 + SBD augmented masks (train + aug = 10,582 images; val 1,449), mmseg's 40k schedule: the
# `voc12aug` setting of the VICRegL linear-segmentation and FCN tables. Needs SegmentationClassAug/ and
# ImageSets/Segmentation/aug.txt (mmseg's tools/dataset_converters/voc_aug.py writes both).
dataset_type = "BaseSegDataset"
classes_from = "voc_root"
num_classes = None
img_suffix = ".jpg"
seg_map_suffix = ".png"
reduce_zero_label = False
train_splits = [
    dict(
        img_path="JPEGImages", seg_map_path="SegmentationClass", ann_file="ImageSets/Segmentation/train.txt"
    ),
    dict(
        img_path="JPEGImages", seg_map_path="SegmentationClassAug", ann_file="ImageSets/Segmentation/aug.txt"
    ),
]
val_split = dict(
    img_path="JPEGImages", seg_map_path="SegmentationClass", ann_file="ImageSets/Segmentation/val.txt"
)
crop_size = 512
resize_scale = (2048, 512)
iters = 40000
val_interval = 4000
checkpoint_interval = 4000
batch_size = 16  # total over processes (mmseg's 4 GPUs x 4)
