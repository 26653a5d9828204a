"""Running trained policies: from raw observations to actions."""
