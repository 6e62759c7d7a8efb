# Pascal VOC 2012 segmentation (train 1,464 / val 1,449), mmseg's 40k schedule.
# Classes: background + `classes.txt` in the data root if present (the synthetic layout),
# else the 20 VOC classes.
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
]
val_split = dict(
    img_path="JPEGImages", seg_map_path="SegmentationClass", ann_file="ImageSets/Segmentation/val.txt"
)
crop_size = (512, 512)  # (height, width); VICRegL appendix D.2 and the official linear_r50 VOC config
resize_scale = (2048, 512)  # mmseg's VOC pipeline: RandomResize ratio 0.5-2.0 in train, Resize at test
iters = 40000
val_interval = 4000
checkpoint_interval = 4000
batch_size = 16  # total over processes (mmseg's 4 GPUs x 4)
