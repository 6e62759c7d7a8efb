# ResNet backbones, as the official linear_r50 configs on mmseg's 40k/160k schedule (mmseg 0.x): linear head
# with dropout 0.1, whole-image inference, SGD (momentum 0.9, weight decay 5e-4), poly decay (power 0.9) to
# 1e-4 per iteration, and the VICRegL learning-rate grid (appendix D.2); the FCN protocol uses this optimiser.
linear_head_dropout = 0.1
inference = dict(mode="whole")
optimizer = dict(type="SGD", momentum=0.9, weight_decay=0.0005)
warmup = None
poly = dict(type="PolyLR", power=0.9, eta_min=0.0001)
lr_grid = dict(frozen=[0.1, 0.05, 0.03, 0.02, 0.01], finetune=[0.1, 0.05, 0.03, 0.02, 0.01])
