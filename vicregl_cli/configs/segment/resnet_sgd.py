# ResNet backbones: mmseg's 40k/160k schedule (SGD, momentum 0.9, weight decay 5e-4,
# poly decay power 0.9 to 1e-4 per iteration) and the VICRegL learning-rate grid (appendix D.2), for the
# linear and FCN heads alike.
optimizer = dict(type="SGD", momentum=0.9, weight_decay=0.0005)
paramwise_cfg = None
warmup = None
poly = dict(type="PolyLR", power=0.9, eta_min=0.0001)
lr_grid = dict(frozen=[0.1, 0.05, 0.03, 0.02, 0.01], finetune=[0.1, 0.05, 0.03, 0.02, 0.01])
