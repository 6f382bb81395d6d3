# Text-to-image at paper scale (config/sd3.yaml, config/sd15.yaml): the same DAG as the digits
# benchmark on a diffusers model and the real reward models.
# prompts -> AM/EAM fine-tuning (method x reward x lambda x seed) -> evaluation samples -> metrics -> report.
# Its settings, run list and path helpers are in common.smk (T2I, TRES, TRUNS, weights_arg, ...).
check_files([*T2I["prompts"]["train"], *T2I["prompts"].get("eval", []), T2I["settings"]], "t2i input file")
check_settings(T2I["settings"])
if not set(T2I["rewards"]) <= set(T2I["metrics"]):
    raise WorkflowError(f"t2i.rewards {sorted(set(T2I['rewards']) - set(T2I['metrics']))} must also be listed "
                        "in t2i.metrics (the report compares the training reward across runs)")


rule t2i_prompts:
    input:
        train=T2I["prompts"]["train"],
        eval=T2I["prompts"].get("eval", []),
    output:
        train=f"{TRES}/prompts/train.jsonl",
        eval=f"{TRES}/prompts/eval.jsonl",
    params:
        eval_src=lambda w, input: f"--eval-src {' '.join(input.eval)}" if input.eval else "",
        out=lambda w, output: parent(output.train),
    log:
        f"{RESULTS}/logs/{T2I['name']}/prompts.log",
    conda:
        ENV
    shell:
        "eam prompts {input.train} {params.eval_src} --domain text --out {params.out} > {log} 2>&1"


rule t2i_finetune:
    input:
        prompts=rules.t2i_prompts.output,
        settings=T2I["settings"],
    output:
        expand(f"{TRES}/runs/{RUN}/{{f}}", f=[*MODEL_FILES, "metrics.jsonl", "summary.json"], allow_missing=True),
    params:
        model=T2I["model"],
        model_path=T2I["model_path"],
        reward_path=lambda w: weights_arg(w.reward, "--reward-path"),
        guidance=T2I["guidance_scale"],
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/{T2I['name']}/runs/{RUN}.log",
    conda:
        ENV
    threads: 4
    resources:
        gpu=GPU,
        runtime=T2I_RUNTIME.get("finetune", 720),
        mem_mb=T2I_MEM,
    shell:
        "eam finetune --model {params.model} --model-path {params.model_path} --reward {wildcards.reward} "
        "{params.reward_path} --method {wildcards.method} --lam {wildcards.lam} --seed {wildcards.seed} "
        "--settings {input.settings} --prompts {input.prompts[0]} --eval-prompts {input.prompts[1]} "
        "--guidance-scale {params.guidance} --out {params.out} --quiet > {log} 2>&1"


rule t2i_sample:
    input:
        model=lambda w: [] if w.run == "base" else f"{TRES}/runs/{w.run}/model.safetensors",
        prompts=rules.t2i_prompts.output.eval,
        settings=T2I["settings"],
    output:
        f"{TRES}/samples/{{run}}.safetensors",
    params:
        model=T2I["model"],
        model_path=lambda w, input: parent(input.model) if input.model else T2I["model_path"],
        per_prompt=T2I["eval"]["per_prompt"],
        steps=T2I["eval"]["steps"],
        guidance=T2I["guidance_scale"],
    log:
        f"{RESULTS}/logs/{T2I['name']}/samples/{{run}}.log",
    conda:
        ENV
    threads: 4
    resources:
        gpu=GPU,
        runtime=T2I_RUNTIME.get("sample", 120),
        mem_mb=T2I_MEM,
    shell:
        "eam sample --model {params.model} --model-path {params.model_path} --settings {input.settings} "
        "--prompts {input.prompts} --per-prompt {params.per_prompt} --steps {params.steps} "
        "--guidance-scale {params.guidance} --out {output} > {log} 2>&1"


rule t2i_pool:
    input:
        prompts=rules.t2i_prompts.output.eval,
        settings=T2I["settings"],
    output:
        f"{TRES}/truth/pool.safetensors",
    params:
        model=T2I["model"],
        model_path=T2I["model_path"],
        per_prompt=(T2I_TRUTH or {}).get("pool_per_prompt"),
        steps=T2I["eval"]["steps"],
        guidance=T2I["guidance_scale"],
    log:
        f"{RESULTS}/logs/{T2I['name']}/truth/pool.log",
    conda:
        ENV
    threads: 4
    resources:
        gpu=GPU,
        runtime=T2I_RUNTIME.get("sample", 120),
        mem_mb=T2I_MEM,
    shell:
        "eam sample --model {params.model} --model-path {params.model_path} --settings {input.settings} "
        "--prompts {input.prompts} --per-prompt {params.per_prompt} --steps {params.steps} "
        "--guidance-scale {params.guidance} --stream 1 --out {output} > {log} 2>&1"


rule t2i_tilt_truth:
    input:
        pool=rules.t2i_pool.output,
        base=f"{TRES}/samples/base.safetensors",
    output:
        expand(f"{TRES}/truth/{TRUTH}/{{f}}", f=TRUTH_FILES, allow_missing=True),
    params:
        reward=lambda w: f"{w.reward}={T2I_WEIGHTS[w.reward]}" if T2I_WEIGHTS.get(w.reward) else w.reward,
        metrics=t2i_metric_args(),
        features=T2I_FEATURES,
        per_prompt=T2I["eval"]["per_prompt"],
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/{T2I['name']}/truth/{TRUTH}.log",
    conda:
        ENV
    threads: 4
    resources:
        gpu=GPU,
        runtime=60,
        mem_mb=T2I_MEM,
    shell:
        "eam tilt-truth --pool {input.pool} --reward {params.reward} --lam {wildcards.lam} {params.metrics} "
        "--features {params.features} --base-samples {input.base} --per-prompt {params.per_prompt} "
        "--out {params.out} > {log} 2>&1"


rule t2i_score:
    input:
        samples=f"{TRES}/samples/{{run}}.safetensors",
        base=f"{TRES}/samples/base.safetensors",
        pstar=t2i_pstar,
    output:
        f"{TRES}/scores/{{run}}.json",
    params:
        metrics=t2i_metric_args(),
        features=T2I_FEATURES,
        pstar=lambda w, input: f"--pstar {input.pstar}" if input.pstar else "",
    log:
        f"{RESULTS}/logs/{T2I['name']}/scores/{{run}}.log",
    conda:
        ENV
    threads: 4
    resources:
        gpu=GPU,
        runtime=60,
        mem_mb=T2I_MEM,
    shell:
        "eam score --samples {input.samples} --base-samples {input.base} {params.metrics} "
        "--features {params.features} {params.pstar} --out {output} > {log} 2>&1"


rule t2i_report:
    input:
        runs=expand(f"{TRES}/runs/{{run}}/metrics.jsonl", run=TRUNS),
        scores=expand(f"{TRES}/scores/{{run}}.json", run=TRUNS),
        base=f"{TRES}/scores/base.json",
        truth=expand(f"{TRES}/truth/{TRUTH}/truth.json", reward=T2I["rewards"], lam=T2I["lambdas"])
        if T2I_TRUTH else [],
        grid=[f"{TRES}/samples/base.safetensors",
              *(f"{TRES}/samples/{m}/{T2I['rewards'][0]}/lam{max(T2I['lambdas'])}/seed{T2I['seeds'][0]}.safetensors"
                for m in T2I["methods"])],
    output:
        expand(f"{TRES}/report/{{f}}", f=[*REPORT_FILES, *(["verdict.md"] if T2I_TRUTH else [])]),
    params:
        runs=lambda w, input: " ".join(parent(p) for p in input.runs),
        truth=lambda w, input: f"--truth {' '.join(input.truth)}" if input.truth else "",
        grid=lambda w, input: grid_args(input.grid, T2I["methods"], T2I["lambdas"]),
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/{T2I['name']}/report.log",
    conda:
        ENV
    shell:
        "eam finetune-report --runs {params.runs} --scores {input.scores} --base-scores {input.base} "
        "{params.truth} --grid {params.grid} --out {params.out} > {log} 2>&1"


rule t2i_all:
    input:
        rules.t2i_report.output,
