"""ReDimNet-MRL speaker embeddings: task, verification and commands."""
