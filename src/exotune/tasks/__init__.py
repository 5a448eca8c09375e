"""Tasks: heads, losses and metrics."""
