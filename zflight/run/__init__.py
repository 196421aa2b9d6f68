"""Run machinery: building the trainer, checkpoints, run directories, signals and the console."""
