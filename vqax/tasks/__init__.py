"""Training tasks: what a model is trained on and with which loss (the trainer is shared)."""
