"""VICRegL pretraining: losses, model, optimisers and schedules, the training engine."""
