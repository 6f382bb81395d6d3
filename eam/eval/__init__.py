"""Evaluation, apart from training: `samples` (fixed-noise sample sets and their files), `metrics` (every metric of
a sample set, `eam score`) and `truth` (the tilted law by importance sampling, `eam tilt-truth`)."""
