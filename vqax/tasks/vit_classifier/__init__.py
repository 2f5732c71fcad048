"""ViT spectrogram classifier with staged unfreezing, GAN augmentation loop and evaluation."""
