"""The protocol defaults that `--help` shows, in a module that imports nothing: the command line answers
without loading torch, and the protocols import these same values from here."""

# `vicregl export --to`: the layouts vicregl_cli.export writes
EXPORT_TARGETS = ("torchvision", "timm", "mmseg", "detectron2", "vicregl")

# `vicregl svm`: VISSL's VOC07 SVM benchmark (cost grid, cross-validation folds, LIBLINEAR iterations)
VISSL_COSTS: tuple[float, ...] = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
VISSL_FOLDS = 3
VISSL_MAX_ITER = 2000

# `vicregl semi --grid`: the backbone x head search of VICReg appendix B.2, which names no values: the 1-3-10
# ladder around the paper's lrs, with the 1 % head lr 0.08, so that both paper pairs are grid points
SEMI_GRID_BACKBONE = (0.003, 0.01, 0.03, 0.1)
SEMI_GRID_HEAD = (0.03, 0.08, 0.1, 0.3)
