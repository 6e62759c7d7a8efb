# Cityscapes fine (train 2,975 / val 500, 19 classes), mmseg's 40k schedule, 512 x 1024 crops as the official
# linear_r50_512x1024_40k_cityscapes.py on mmseg's Cityscapes base (the appendix says 512 x 512 "for all
# datasets"; its num_classes=30 is a mistake for the 19 train ids): see docs/segment.md.
# Needs gtFine/*/*_gtFine_labelTrainIds.png (mmseg's tools/dataset_converters/cityscapes.py writes them).
dataset_type = "CityscapesDataset"
classes_from = "dataset"
num_classes = 19
img_suffix = "_leftImg8bit.png"
seg_map_suffix = "_gtFine_labelTrainIds.png"
reduce_zero_label = False
train_splits = [dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train", ann_file="")]
val_split = dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val", ann_file="")
crop_size = (512, 1024)  # (height, width)
resize_scale = (2048, 1024)
iters = 40000
val_interval = 4000
checkpoint_interval = 4000
batch_size = 8  # total over processes (mmseg's 4 GPUs x 2)
