"""Class-conditional GAN of log-mel spectrograms: task, step, generation and commands."""
