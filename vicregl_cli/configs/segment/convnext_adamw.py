# ConvNeXt backbones, as the official linear_cnxt-{s,b,xl} configs (mmseg 0.x): linear head without dropout,
# sliding-window inference (512 x 512 window, stride 341; window and stride follow the training crop), AdamW
# with weight decay 0.05 on every parameter (no paramwise exclusion), poly decay (power 1, min lr 0) from
# iteration 0 multiplied by a linear warm-up from 1e-6 x lr over 1,500 iterations (capped at a tenth of the
# run); the VICRegL learning-rate grids (appendix D.2).
linear_head_dropout = 0.0
inference = dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
optimizer = dict(type="AdamW", betas=(0.9, 0.999), weight_decay=0.05)
warmup = dict(type="LinearLR", start_factor=1e-06, iters=1500)
poly = dict(type="PolyLR", power=1.0, eta_min=0.0)
lr_grid = dict(
    frozen=[0.001, 0.0008, 0.0003, 0.0001, 8e-05],
    finetune=[0.0001, 8e-05, 3e-05, 1e-05, 8e-06, 3e-06, 1e-06],
)
