"""VQ-VAE anomalous-sound detection (DCASE2020 Task 2 style): task, scoring and commands."""
