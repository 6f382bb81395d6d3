# The digits benchmark's own models, trained offline on 2 CPU cores from sklearn's digits: the reward models
# (classifiers, a tiny CLIP) and the class-conditional rectified-flow base. Its fine-tuning, evaluation and
# report rules are the shared ones of finetune.smk (digits_prompts, digits_finetune, ...).


rule digits_reward_model:
    input:
        prompts=f"{RESULTS}/digits/prompts/train.jsonl",
    output:
        expand(f"{RESULTS}/digits/models/{{{{name}}}}/{{f}}", f=MODEL_FILES),
    wildcard_constraints:
        name="|".join(TRAINED_REWARDS),
    params:
        epochs=DIG["reward_epochs"],
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/digits/{{name}}.log",
    conda:
        ENV
    priority: 10
    threads: 1
    resources:
        runtime=15,
    shell:
        "OMP_NUM_THREADS={threads} eam digits-pretrain {wildcards.name} --prompts {input.prompts} --iters {params.epochs} "
        "--out {params.out} --quiet > {log} 2>&1"


rule digits_base:
    input:
        classifier=expand(f"{RESULTS}/digits/models/digit_classifier/{{f}}", f=MODEL_FILES),
    output:
        expand(f"{RESULTS}/digits/models/base/{{f}}", f=MODEL_FILES),
    params:
        iters=DIG["base"]["iters"],
        channels=DIG["base"]["channels"],
        min_accuracy=DIG["base"]["min_accuracy"],
        classifier=lambda w, input: parent(input.classifier[0]),
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/digits/base.log",
    conda:
        ENV
    priority: 10  # the longest chain of the DAG: start it first
    threads: 1
    resources:
        runtime=30,
    shell:
        "OMP_NUM_THREADS={threads} eam digits-pretrain flow --iters {params.iters} --channels {params.channels} "
        "--check-with {params.classifier} --min-accuracy {params.min_accuracy} --out {params.out} --quiet > {log} 2>&1"
