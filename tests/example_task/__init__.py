"""A linear probe on two Gaussian classes: the smallest complete vqax task (see test_architecture.py)."""
