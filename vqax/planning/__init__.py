"""Memory planning: compiled peaks before a run (`vqax plan`), and the report when a step runs out of memory."""
