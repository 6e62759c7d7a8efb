# ConvNeXt backbones: AdamW (weight decay 0.05, none on norms and biases) with mmseg's ConvNeXt schedule:
# linear warm-up from 1e-6 x lr over 1,500 iterations (capped at a tenth of the run), then poly decay
# (power 1) to 0; the VICRegL learning-rate grids (appendix D.2).
optimizer = dict(type="AdamW", betas=(0.9, 0.999), weight_decay=0.05)
paramwise_cfg = dict(norm_decay_mult=0.0, bias_decay_mult=0.0)
warmup = dict(type="LinearLR", start_factor=1e-06, iters=1500)
poly = dict(type="PolyLR", power=1.0, eta_min=0.0)
lr_grid = dict(
    frozen=[0.001, 0.0008, 0.0003, 0.0001, 8e-05],
    finetune=[0.0001, 8e-05, 3e-05, 1e-05, 8e-06, 3e-06, 1e-06],
)
