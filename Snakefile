# eam workflow: `snakemake --cores 2 all` runs the embedded default (config/config.yaml);
# `snakemake --profile profiles/slurm all` the same DAG on a cluster; `--configfile config/sd3.yaml`
# (or sd15.yaml) the paper-scale text-to-image benchmark; `--configfile config/bench.yaml` the
# per-iteration cost benchmark at SD3-medium and SD1.5 shapes (random weights, one GPU).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"  # validates the config against workflow/schemas/ first


# Each benchmark section of the config is optional (config/sd3.yaml sets gmm and digits to null); digits and
# t2i share the fine-tuning rules of finetune.smk, one entry each (FT in common.smk).
if config.get("gmm"):

    include: "workflow/rules/gmm.smk"


if config.get("digits"):

    include: "workflow/rules/digits.smk"


include: "workflow/rules/finetune.smk"


if config.get("bench"):

    include: "workflow/rules/bench.smk"


rule all:
    default_target: True
    input:
        rules.gmm_all.input if config.get("gmm") else [],
        [getattr(rules, f"{e['prefix']}_all").input for e in FT.values()],
        rules.bench_all.input if config.get("bench") else [],
