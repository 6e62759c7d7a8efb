"""Classification evaluations on frozen or fine-tuned backbones: k-NN, linear probe, semi-supervised."""
