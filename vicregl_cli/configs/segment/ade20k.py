# ADE20k (ADEChallengeData2016: train 20,210 / val 2,000, 150 classes, label 0 ignored),
# mmseg's 160k schedule: the ConvNeXt setting of VICRegL appendix D.2.
dataset_type = "ADE20KDataset"
classes_from = "dataset"
num_classes = 150
img_suffix = ".jpg"
seg_map_suffix = ".png"
reduce_zero_label = True
train_splits = [dict(img_path="images/training", seg_map_path="annotations/training", ann_file="")]
val_split = dict(img_path="images/validation", seg_map_path="annotations/validation", ann_file="")
crop_size = (512, 512)  # (height, width)
resize_scale = (2048, 512)
iters = 160000
val_interval = 16000
checkpoint_interval = 16000
batch_size = 16  # total over processes (mmseg's 4 GPUs x 4)
