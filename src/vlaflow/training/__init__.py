"""Training: configs, optimizer and schedule, checkpoints, distributed wrapping, the trainer loop."""
