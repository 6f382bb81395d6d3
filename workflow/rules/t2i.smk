# Text-to-image at paper scale (config/sd3.yaml, config/sd15.yaml): the same DAG as the digits
# benchmark on a diffusers model and the real reward models.
# prompts -> AM/EAM fine-tuning (method x reward x lambda x seed) -> evaluation samples -> metrics -> report.
T2I = config["t2i"]
TRES = f"{RESULTS}/{T2I['name']}"
check_files([*T2I["prompts"]["train"], *T2I["prompts"].get("eval", []), T2I["settings"]], "t2i input file")
if not set(T2I["rewards"]) <= set(T2I["metrics"]):
    raise WorkflowError(f"t2i.rewards {sorted(set(T2I['rewards']) - set(T2I['metrics']))} must also be listed "
                        "in t2i.metrics (the report compares the training reward across runs)")
TRUN = "{method}/{reward}/lam{lam}/seed{seed}"
TRUNS = expand(TRUN, method=T2I["methods"], reward=T2I["rewards"], lam=T2I["lambdas"], seed=T2I["seeds"])
T2I_WEIGHTS = T2I.get("weights") or {}
GPU = T2I.get("gpus", 1)


def weights_arg(name, flag):
    """`FLAG PATH` for a reward whose weights folder is configured; nothing for the HF cache."""
    return f"{flag} {T2I_WEIGHTS[name]}" if T2I_WEIGHTS.get(name) else ""


def t2i_metric_args():
    return " ".join(f"--metric {n}={T2I_WEIGHTS[n]}" if T2I_WEIGHTS.get(n) else f"--metric {n}" for n in T2I["metrics"])


rule t2i_prompts:
    input:
        train=T2I["prompts"]["train"],
        eval=T2I["prompts"].get("eval", []),
    output:
        train=f"{TRES}/prompts/train.jsonl",
        eval=f"{TRES}/prompts/eval.jsonl",
    params:
        eval_src=lambda w, input: f"--eval-src {' '.join(input.eval)}" if input.eval else "",
    log:
        f"{RESULTS}/logs/{T2I['name']}/prompts.log",
    shell:
        "eam prompts {input.train} {params.eval_src} --domain text --out {TRES}/prompts > {log} 2>&1"


rule t2i_finetune:
    input:
        prompts=rules.t2i_prompts.output,
        settings=T2I["settings"],
    output:
        expand(f"{TRES}/runs/{TRUN}/{{f}}", f=["config.json", "model.safetensors", "metrics.jsonl", "summary.json"],
               allow_missing=True),
    params:
        reward_path=lambda w: weights_arg(w.reward, "--reward-path"),
        out=f"{TRES}/runs/{TRUN}",
    log:
        f"{RESULTS}/logs/{T2I['name']}/runs/{TRUN}.log",
    threads: 4
    resources:
        gpu=GPU,
        runtime=T2I.get("runtime_min", {}).get("finetune", 720),
        mem_mb=T2I.get("mem_mb", 64000),
    shell:
        "eam finetune --model {T2I[model]} --model-path {T2I[model_path]} --reward {wildcards.reward} "
        "{params.reward_path} --method {wildcards.method} --lam {wildcards.lam} --seed {wildcards.seed} "
        "--settings {input.settings} --prompts {input.prompts[0]} --eval-prompts {input.prompts[1]} "
        "--guidance-scale {T2I[guidance_scale]} --out {params.out} --quiet > {log} 2>&1"


rule t2i_sample:
    input:
        model=lambda w: [] if w.run == "base" else f"{TRES}/runs/{w.run}/model.safetensors",
        prompts=rules.t2i_prompts.output.eval,
        settings=T2I["settings"],
    output:
        f"{TRES}/samples/{{run}}.safetensors",
    params:
        model=lambda w: T2I["model_path"] if w.run == "base" else f"{TRES}/runs/{w.run}",
    log:
        f"{RESULTS}/logs/{T2I['name']}/samples/{{run}}.log",
    threads: 4
    resources:
        gpu=GPU,
        runtime=T2I.get("runtime_min", {}).get("sample", 120),
        mem_mb=T2I.get("mem_mb", 64000),
    shell:
        "eam sample --model {T2I[model]} --model-path {params.model} --settings {input.settings} "
        "--prompts {input.prompts} --per-prompt {T2I[eval][per_prompt]} --steps {T2I[eval][steps]} "
        "--guidance-scale {T2I[guidance_scale]} --out {output} > {log} 2>&1"


T2I_TRUTH = T2I.get("truth")
T2I_FEATURES = f"{T2I['features']}={T2I_WEIGHTS[T2I['features']]}" if T2I_WEIGHTS.get(T2I["features"]) else T2I["features"]


rule t2i_pool:
    input:
        prompts=rules.t2i_prompts.output.eval,
        settings=T2I["settings"],
    output:
        f"{TRES}/truth/pool.safetensors",
    params:
        per_prompt=(T2I_TRUTH or {}).get("pool_per_prompt"),
    log:
        f"{RESULTS}/logs/{T2I['name']}/truth/pool.log",
    threads: 4
    resources:
        gpu=GPU,
        runtime=T2I.get("runtime_min", {}).get("sample", 120),
        mem_mb=T2I.get("mem_mb", 64000),
    shell:
        "eam sample --model {T2I[model]} --model-path {T2I[model_path]} --settings {input.settings} "
        "--prompts {input.prompts} --per-prompt {params.per_prompt} --steps {T2I[eval][steps]} "
        "--guidance-scale {T2I[guidance_scale]} --stream 1 --out {output} > {log} 2>&1"


rule t2i_tilt_truth:
    input:
        pool=rules.t2i_pool.output,
        base=f"{TRES}/samples/base.safetensors",
    output:
        expand(f"{TRES}/truth/{{reward}}/lam{{lam}}/{{f}}", f=["truth.json", "pstar_a.safetensors", "pstar_b.safetensors"],
               allow_missing=True),
    params:
        reward=lambda w: f"{w.reward}={T2I_WEIGHTS[w.reward]}" if T2I_WEIGHTS.get(w.reward) else w.reward,
        metrics=t2i_metric_args(),
        out=f"{TRES}/truth/{{reward}}/lam{{lam}}",
    log:
        f"{RESULTS}/logs/{T2I['name']}/truth/{{reward}}/lam{{lam}}.log",
    threads: 4
    resources:
        gpu=GPU,
        runtime=60,
        mem_mb=T2I.get("mem_mb", 64000),
    shell:
        "eam tilt-truth --pool {input.pool} --reward {params.reward} --lam {wildcards.lam} {params.metrics} "
        "--features {T2I_FEATURES} --base-samples {input.base} --per-prompt {T2I[eval][per_prompt]} "
        "--out {params.out} > {log} 2>&1"


def t2i_pstar(w):
    """The p* set a run's samples are compared with (none for the base, or without `truth:`)."""
    if w.run == "base" or not T2I_TRUTH:
        return []
    _, reward, lam, _ = w.run.split("/")
    return f"{TRES}/truth/{reward}/{lam}/pstar_a.safetensors"


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
    threads: 4
    resources:
        gpu=GPU,
        runtime=60,
        mem_mb=T2I.get("mem_mb", 64000),
    shell:
        "eam score --samples {input.samples} --base-samples {input.base} {params.metrics} "
        "--features {params.features} {params.pstar} --out {output} > {log} 2>&1"


rule t2i_report:
    input:
        runs=expand(f"{TRES}/runs/{{run}}/metrics.jsonl", run=TRUNS),
        scores=expand(f"{TRES}/scores/{{run}}.json", run=TRUNS),
        base=f"{TRES}/scores/base.json",
        truth=expand(f"{TRES}/truth/{{reward}}/lam{{lam}}/truth.json", reward=T2I["rewards"], lam=T2I["lambdas"])
        if T2I_TRUTH else [],
        grid=[f"{TRES}/samples/base.safetensors",
              *(f"{TRES}/samples/{m}/{T2I['rewards'][0]}/lam{max(T2I['lambdas'])}/seed{T2I['seeds'][0]}.safetensors"
                for m in T2I["methods"])],
    output:
        expand(f"{TRES}/report/{{f}}", f=["reward_vs_time.png", "reward_vs_nfe.png", "tradeoff.png", "samples.png",
                                          "table.csv", "table.md", "table.tex", "time_to_threshold.csv",
                                          "time_to_quality.md", "time_to_quality.png",
                                          *(["verdict.md"] if T2I_TRUTH else [])]),
    params:
        runs=expand(f"{TRES}/runs/{{run}}", run=TRUNS),
        truth=lambda w, input: f"--truth {' '.join(input.truth)}" if input.truth else "",
        grid=" ".join(["base=" + f"{TRES}/samples/base.safetensors",
                       *(f"{m.upper()}_lam{max(T2I['lambdas'])}={TRES}/samples/{m}/{T2I['rewards'][0]}/"
                         f"lam{max(T2I['lambdas'])}/seed{T2I['seeds'][0]}.safetensors" for m in T2I["methods"])]),
    log:
        f"{RESULTS}/logs/{T2I['name']}/report.log",
    shell:
        "eam finetune-report --runs {params.runs} --scores {input.scores} --base-scores {input.base} "
        "{params.truth} --grid {params.grid} --out {TRES}/report > {log} 2>&1"


rule t2i_all:
    input:
        rules.t2i_report.output,
