"""Dense transfer: semantic segmentation on mmsegmentation, detection on detectron2 or torchvision."""
