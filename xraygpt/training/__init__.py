"""Training: runner, tasks, LR schedules, checkpoints, distributed set-up, metric logging."""
