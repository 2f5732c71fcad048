"""The DCASE2020 Task 2 baseline autoencoder as a task of its own: `vqax train` and `vqax score`."""
