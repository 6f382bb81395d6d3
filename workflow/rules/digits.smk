# Embedded default: a text-to-image-like benchmark on sklearn's digits, offline on 2 CPU cores.
# prompts -> base and reward models -> AM/EAM fine-tuning (method x reward x lambda x seed)
# -> evaluation samples (fixed seeds) -> every metric -> figures and tables.
# Its settings, run list and path helpers are in common.smk (DIG, DRES, RUNS, reward_dir, ...).
check_files([DIG["prompts"], DIG["settings"]], "digits input file")
check_settings(DIG["settings"])
if not set(DIG["rewards"]) <= set(DIG["metrics"]):
    raise WorkflowError(f"digits.rewards {sorted(set(DIG['rewards']) - set(DIG['metrics']))} must also be listed "
                        "in digits.metrics (the report compares the training reward across runs)")


rule digits_prompts:
    input:
        DIG["prompts"],
    output:
        train=f"{DRES}/prompts/train.jsonl",
        eval=f"{DRES}/prompts/eval.jsonl",
    params:
        out=lambda w, output: parent(output.train),
    log:
        f"{RESULTS}/logs/digits/prompts.log",
    conda:
        ENV
    priority: 10
    shell:
        "eam prompts {input} --domain digits --out {params.out} > {log} 2>&1"


rule digits_reward_model:
    input:
        prompts=rules.digits_prompts.output.train,
    output:
        expand(f"{DRES}/models/{{{{name}}}}/{{f}}", f=MODEL_FILES),
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
        classifier=expand(f"{DRES}/models/digit_classifier/{{f}}", f=MODEL_FILES),
    output:
        expand(f"{DRES}/models/base/{{f}}", f=MODEL_FILES),
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


rule digits_correction:
    input:
        base=rules.digits_base.output,
        reward=expand(f"{DRES}/models/digit_classifier/{{f}}", f=MODEL_FILES),
        prompts=rules.digits_prompts.output,
        settings=DIG["settings"],
    output:
        expand(f"{CORRECTION}/{{f}}", f=[*MODEL_FILES, "metrics.jsonl", "summary.json"]),
    params:
        guidance=DIG["guidance_scale"],
        fit=correction_fit_args(DIG["settings"]),
        base=lambda w, input: parent(input.base[0]),
        reward=lambda w, input: parent(input.reward[0]),
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/digits/correction.log",
    conda:
        ENV
    priority: 5
    threads: 1
    resources:
        runtime=60,  # CORRECTION_FIT x a run
    shell:  # docs/method.md §5.5: the λ = 0 endpoint fit with x_1 from the frozen base (the reward is unused)
        "OMP_NUM_THREADS={threads} eam finetune --model digits_flow --model-path {params.base} "
        "--reward digit_classifier --reward-path {params.reward} --method eam-endpoint --lam 0 "
        "--set eam.sampler=base {params.fit} --settings {input.settings} --prompts {input.prompts[0]} "
        "--eval-prompts {input.prompts[1]} --guidance-scale {params.guidance} --out {params.out} --quiet > {log} 2>&1"


rule digits_anchor:
    input:
        base=rules.digits_base.output,
        correction=rules.digits_correction.output,
        reward=expand(f"{DRES}/models/digit_classifier/{{f}}", f=MODEL_FILES),
        prompts=rules.digits_prompts.output,
        settings=DIG["settings"],
    output:
        ANCHOR,
    params:
        guidance=DIG["guidance_scale"],
        base=lambda w, input: parent(input.base[0]),
        correction=lambda w, input: parent(input.correction[0]),
        reward=lambda w, input: parent(input.reward[0]),
    log:
        f"{RESULTS}/logs/digits/anchor.log",
    conda:
        ENV
    priority: 5
    threads: 1
    resources:
        runtime=30,
    shell:  # docs/method.md §5.6: the mean λ = 0 gradient of `corrected` at the base (the reward is unused)
        "OMP_NUM_THREADS={threads} eam finetune --model digits_flow --model-path {params.base} "
        "--reward digit_classifier --reward-path {params.reward} --method eam-corrected --lam 0 "
        "--settings {input.settings} --set eam.correction={params.correction} --prompts {input.prompts[0]} "
        "--eval-prompts {input.prompts[1]} --guidance-scale {params.guidance} --anchor-only --out {output} "
        "--quiet > {log} 2>&1"


rule digits_finetune:
    input:
        base=rules.digits_base.output,
        correction=lambda w: expand(f"{CORRECTION}/{{f}}", f=MODEL_FILES) if needs_correction(w.method) else [],
        anchor=lambda w: [ANCHOR] if needs_anchor(w.method) else [],
        reward=lambda w: expand(f"{DRES}/models/{w.reward}/{{f}}", f=MODEL_FILES) if reward_dir(w.reward) else [],
        prompts=rules.digits_prompts.output,
        settings=DIG["settings"],
    output:
        expand(f"{DRES}/runs/{RUN}/{{f}}", f=[*MODEL_FILES, "metrics.jsonl", "summary.json"], allow_missing=True),
    params:
        base=lambda w, input: parent(input.base[0]),
        reward_path=lambda w, input: f"--reward-path {parent(input.reward[0])}" if input.reward else "",
        out=lambda w, output: parent(output[0]),
        guidance=DIG["guidance_scale"],
        correction=lambda w, input: f"--set eam.correction={parent(input.correction[0])}" if input.correction else "",
        anchor=lambda w, input: f"--set eam.anchor={input.anchor[0]}" if input.anchor else "",
    log:
        f"{RESULTS}/logs/digits/runs/{RUN}.log",
    conda:
        ENV
    priority: 1  # before the pool, samples and scores: the short jobs then fill the last gaps on the cores
    threads: 1
    resources:
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} eam finetune --model digits_flow --model-path {params.base} "
        "--reward {wildcards.reward} {params.reward_path} --method {wildcards.method} --lam {wildcards.lam} "
        "--seed {wildcards.seed} --settings {input.settings} --prompts {input.prompts[0]} "
        "--eval-prompts {input.prompts[1]} --guidance-scale {params.guidance} {params.correction} {params.anchor} "
        "--out {params.out} --quiet > {log} 2>&1"


rule digits_pool:
    input:
        model=f"{DRES}/models/base/model.safetensors",
        prompts=rules.digits_prompts.output.eval,
    output:
        f"{DRES}/truth/pool.safetensors",
    params:
        model=lambda w, input: parent(input.model),
        per_prompt=DIG["truth"]["pool_per_prompt"],
        steps=DIG["eval"]["steps"],
        guidance=DIG["guidance_scale"],
    log:
        f"{RESULTS}/logs/digits/truth/pool.log",
    conda:
        ENV
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} eam sample --model digits_flow --model-path {params.model} --prompts {input.prompts} "
        "--per-prompt {params.per_prompt} --steps {params.steps} --guidance-scale {params.guidance} --stream 1 "
        "--out {output} > {log} 2>&1"


rule digits_tilt_truth:
    input:
        pool=rules.digits_pool.output,
        base=f"{DRES}/samples/base.safetensors",
        models=[f"{reward_dir(n)}/model.safetensors" for n in sorted({*DIG["metrics"], *DIG["rewards"], "digit_classifier"})
                if reward_dir(n)],
        features=f"{DRES}/models/digit_classifier/model.safetensors",
    output:
        expand(f"{DRES}/truth/{TRUTH}/{{f}}", f=TRUTH_FILES, allow_missing=True),
    params:
        reward=lambda w: f"{w.reward}={reward_dir(w.reward)}" if reward_dir(w.reward) else w.reward,
        metrics=metric_args(DIG["metrics"]),
        features=lambda w, input: f"digit_classifier={parent(input.features)}",
        per_prompt=DIG["eval"]["per_prompt"],
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/digits/truth/{TRUTH}.log",
    conda:
        ENV
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} eam tilt-truth --pool {input.pool} --reward {params.reward} --lam {wildcards.lam} "
        "{params.metrics} --features {params.features} --base-samples {input.base} "
        "--per-prompt {params.per_prompt} --out {params.out} > {log} 2>&1"


rule digits_sample:
    input:
        model=lambda w: f"{model_dir(w)}/model.safetensors",
        prompts=rules.digits_prompts.output.eval,
    output:
        f"{DRES}/samples/{{run}}.safetensors",
    params:
        model=lambda w, input: parent(input.model),
        per_prompt=DIG["eval"]["per_prompt"],
        steps=DIG["eval"]["steps"],
        guidance=DIG["guidance_scale"],
    log:
        f"{RESULTS}/logs/digits/samples/{{run}}.log",
    conda:
        ENV
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} eam sample --model digits_flow --model-path {params.model} --prompts {input.prompts} "
        "--per-prompt {params.per_prompt} --steps {params.steps} --guidance-scale {params.guidance} "
        "--out {output} > {log} 2>&1"


rule digits_score:
    input:
        samples=f"{DRES}/samples/{{run}}.safetensors",
        base=f"{DRES}/samples/base.safetensors",
        models=[f"{reward_dir(n)}/model.safetensors" for n in sorted({*DIG["metrics"], "digit_classifier"}) if reward_dir(n)],
        features=f"{DRES}/models/digit_classifier/model.safetensors",
        pstar=lambda w: [] if w.run == "base" else f"{truth_dir(w.run)}/pstar_a.safetensors",
    output:
        f"{DRES}/scores/{{run}}.json",
    params:
        metrics=metric_args(DIG["metrics"]),
        features=lambda w, input: f"digit_classifier={parent(input.features)}",
        pstar=lambda w, input: f"--pstar {input.pstar}" if input.pstar else "",
    log:
        f"{RESULTS}/logs/digits/scores/{{run}}.log",
    conda:
        ENV
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} eam score --samples {input.samples} --base-samples {input.base} {params.metrics} "
        "--features {params.features} {params.pstar} --out {output} > {log} 2>&1"


rule digits_report:
    input:
        runs=expand(f"{DRES}/runs/{{run}}/metrics.jsonl", run=RUNS),
        scores=expand(f"{DRES}/scores/{{run}}.json", run=RUNS),
        base=f"{DRES}/scores/base.json",
        truth=expand(f"{DRES}/truth/{TRUTH}/truth.json", reward=DIG["rewards"], lam=DIG["lambdas"]),
        grid=[f"{DRES}/samples/base.safetensors",
              *(f"{DRES}/samples/{m}/{DIG['rewards'][0]}/lam{max(DIG['lambdas'])}/seed{DIG['seeds'][0]}.safetensors"
                for m in DIG["methods"])],
    output:
        expand(f"{DRES}/report/{{f}}", f=[*REPORT_FILES, "verdict.md"]),
    params:
        runs=lambda w, input: " ".join(parent(p) for p in input.runs),
        grid=lambda w, input: grid_args(input.grid, DIG["methods"], DIG["lambdas"]),
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/digits/report.log",
    conda:
        ENV
    shell:
        "eam finetune-report --runs {params.runs} --scores {input.scores} --base-scores {input.base} "
        "--truth {input.truth} --grid {params.grid} --out {params.out} > {log} 2>&1"


rule digits_all:
    input:
        rules.digits_report.output,
