"""Pure-torch analyses of a CNN: no Lightning, no W&B, no config. Usable post hoc on any model."""
