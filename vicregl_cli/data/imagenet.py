"""ImageNet normalisation statistics, the one copy every transform, config and export uses."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The same on the 0-255 scale (mmseg's SegDataPreProcessor, detectron2's PIXEL_MEAN / PIXEL_STD), RGB order.
IMAGENET_MEAN_255 = [123.675, 116.28, 103.53]
IMAGENET_STD_255 = [58.395, 57.12, 57.375]
