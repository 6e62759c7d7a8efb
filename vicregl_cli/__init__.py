"""vicregl: VICRegL pretraining and the VICReg / VICRegL papers' evaluations from one backbone registry."""

__version__ = "0.1.0"
