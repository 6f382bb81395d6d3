# eam workflow: `snakemake --cores 2 all` runs the embedded default (config/config.yaml);
# `snakemake --profile profiles/slurm all` the same DAG on a cluster.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/gmm.smk"
include: "workflow/rules/digits.smk"


rule all:
    default_target: True
    input:
        rules.gmm_all.input,
        rules.digits_all.input,
