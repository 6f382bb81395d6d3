"""Reports, apart from training and evaluation, each from result files only: `gmm` (`eam gmm-report`), `finetune`
(`eam finetune-report`: curves, tables, time to quality, the verdict) and `bench` (`eam bench`'s bench.md and
bench.png from bench.json); every figure is written by `io.save_figure`."""
