# Fine-tuning benchmarks, one rule set for every entry of FT (common.smk): the digits default and
# text-to-image (config/sd3.yaml, config/sd15.yaml) alike.
# prompts -> [correction, anchor: `corrected` EAM's one-off jobs] -> AM/EAM fine-tuning (method x reward x λ x seed)
# -> evaluation samples (fixed seeds) -> tilted-law ground truth -> every metric -> figures and tables.
# Each entry's rules are named PREFIX_STEP (digits_finetune, t2i_finetune, ...) and write under results/BENCH/;
# the functions they call take the entry from the `bench` wildcard.
import re

for _bench, _e in FT.items():
    _section = _e["section"]
    check_files([*_e["prompts"], *_e["eval_prompts"], _section["settings"]], f"{_e['prefix']} input file")
    check_settings(_section["settings"])
    if not set(_section["rewards"]) <= set(_section["metrics"]):
        raise WorkflowError(f"{_e['prefix']}.rewards {sorted(set(_section['rewards']) - set(_section['metrics']))} must "
                            f"also be listed in {_e['prefix']}.metrics (the report compares the training reward across runs)")
    _res = f"{RESULTS}/{{bench}}"
    _logs = f"{RESULTS}/logs/{{bench}}"

    rule:
        name:
            f"{_e['prefix']}_prompts"
        input:
            train=_e["prompts"],
            eval=_e["eval_prompts"],
        output:
            train=f"{_res}/prompts/train.jsonl",
            eval=f"{_res}/prompts/eval.jsonl",
        wildcard_constraints:
            bench=re.escape(_bench),
        params:
            eval_src=lambda w, input: f"--eval-src {' '.join(input.eval)}" if input.eval else "",
            domain=_e["domain"],
            out=lambda w, output: parent(output.train),
        log:
            f"{_logs}/prompts.log",
        conda:
            ENV
        priority: 10
        shell:
            "eam prompts {input.train} {params.eval_src} --domain {params.domain} --out {params.out} > {log} 2>&1"

    rule:
        name:
            f"{_e['prefix']}_correction"
        input:
            base=lambda w: model_files(w.bench, "base"),
            reward=lambda w: made_weights(w.bench, FT[w.bench]["section"]["rewards"][:1]),
            prompts=f"{_res}/prompts/train.jsonl",
            eval_prompts=f"{_res}/prompts/eval.jsonl",
            settings=_section["settings"],
        output:
            expand(f"{_res}/models/correction/{{f}}", f=[*MODEL_FILES, "metrics.jsonl", "summary.json"], allow_missing=True),
        wildcard_constraints:
            bench=re.escape(_bench),
        params:
            model=_e["model"],
            model_path=lambda w: model_dir(w.bench, "base"),
            reward=lambda w: FT[w.bench]["section"]["rewards"][0],
            reward_path=lambda w: weights_flag(w.bench, FT[w.bench]["section"]["rewards"][0], "--reward-path"),
            guidance=_section["guidance_scale"],
            fit=correction_fit_args(_section["settings"]),
            out=lambda w, output: parent(output[0]),
        log:
            f"{_logs}/correction.log",
        conda:
            ENV
        priority: 5
        threads: _e["threads"]
        resources:
            **_e["resources"]["correction"],
        shell:  # docs/method.md §5.5: the λ = 0 endpoint fit with x_1 from the frozen base (the reward is unused)
            "OMP_NUM_THREADS={threads} eam finetune --model {params.model} --model-path {params.model_path} "
            "--reward {params.reward} {params.reward_path} --method eam-endpoint --lam 0 --set eam.sampler=base {params.fit} "
            "--settings {input.settings} --prompts {input.prompts} --eval-prompts {input.eval_prompts} "
            "--guidance-scale {params.guidance} --out {params.out} --quiet > {log} 2>&1"

    rule:
        name:
            f"{_e['prefix']}_anchor"
        input:
            base=lambda w: model_files(w.bench, "base"),
            correction=f"{_res}/models/correction/model.safetensors",
            reward=lambda w: made_weights(w.bench, FT[w.bench]["section"]["rewards"][:1]),
            prompts=f"{_res}/prompts/train.jsonl",
            eval_prompts=f"{_res}/prompts/eval.jsonl",
            settings=_section["settings"],
        output:
            f"{_res}/models/anchor.safetensors",
        wildcard_constraints:
            bench=re.escape(_bench),
        params:
            model=_e["model"],
            model_path=lambda w: model_dir(w.bench, "base"),
            reward=lambda w: FT[w.bench]["section"]["rewards"][0],
            reward_path=lambda w: weights_flag(w.bench, FT[w.bench]["section"]["rewards"][0], "--reward-path"),
            guidance=_section["guidance_scale"],
            correction=lambda w, input: parent(input.correction),
        log:
            f"{_logs}/anchor.log",
        conda:
            ENV
        priority: 5
        threads: _e["threads"]
        resources:
            **_e["resources"]["anchor"],
        shell:  # docs/method.md §5.6: the mean λ = 0 gradient of `corrected` at the base (the reward is unused)
            "OMP_NUM_THREADS={threads} eam finetune --model {params.model} --model-path {params.model_path} "
            "--reward {params.reward} {params.reward_path} --method eam-corrected --lam 0 --settings {input.settings} "
            "--set eam.correction={params.correction} --prompts {input.prompts} --eval-prompts {input.eval_prompts} "
            "--guidance-scale {params.guidance} --anchor-only --out {output} --quiet > {log} 2>&1"

    rule:
        name:
            f"{_e['prefix']}_finetune"
        input:
            base=lambda w: model_files(w.bench, "base"),
            correction=lambda w: [f"{RESULTS}/{w.bench}/models/correction/model.safetensors"]
            if needs_correction(w.bench, w.method) else [],
            anchor=lambda w: [f"{RESULTS}/{w.bench}/models/anchor.safetensors"] if needs_anchor(w.bench, w.method) else [],
            reward=lambda w: made_weights(w.bench, [w.reward]),
            prompts=f"{_res}/prompts/train.jsonl",
            eval_prompts=f"{_res}/prompts/eval.jsonl",
            settings=_section["settings"],
        output:
            expand(f"{_res}/runs/{RUN}/{{f}}", f=[*MODEL_FILES, "metrics.jsonl", "summary.json"], allow_missing=True),
        wildcard_constraints:
            bench=re.escape(_bench),
        params:
            model=_e["model"],
            model_path=lambda w: model_dir(w.bench, "base"),
            reward_path=lambda w: weights_flag(w.bench, w.reward, "--reward-path"),
            guidance=_section["guidance_scale"],
            correction=lambda w, input: f"--set eam.correction={parent(input.correction[0])}" if input.correction else "",
            anchor=lambda w, input: f"--set eam.anchor={input.anchor[0]}" if input.anchor else "",
            out=lambda w, output: parent(output[0]),
        log:
            f"{_logs}/runs/{RUN}.log",
        conda:
            ENV
        priority: 1  # before the pool, samples and scores: the short jobs then fill the last gaps on the cores
        threads: _e["threads"]
        resources:
            **_e["resources"]["finetune"],
        shell:
            "OMP_NUM_THREADS={threads} eam finetune --model {params.model} --model-path {params.model_path} "
            "--reward {wildcards.reward} {params.reward_path} --method {wildcards.method} --lam {wildcards.lam} --seed {wildcards.seed} "
            "--settings {input.settings} --prompts {input.prompts} --eval-prompts {input.eval_prompts} "
            "--guidance-scale {params.guidance} {params.correction} {params.anchor} --out {params.out} --quiet "
            "> {log} 2>&1"

    rule:
        name:
            f"{_e['prefix']}_sample"
        input:
            model=lambda w: model_files(w.bench, w.run),
            prompts=f"{_res}/prompts/eval.jsonl",
            settings=_section["settings"],
        output:
            f"{_res}/samples/{{run}}.safetensors",
        wildcard_constraints:
            bench=re.escape(_bench),
        params:
            model=_e["model"],
            model_path=lambda w: model_dir(w.bench, w.run),
            per_prompt=_section["eval"]["per_prompt"],
            steps=_section["eval"]["steps"],
            guidance=_section["guidance_scale"],
        log:
            f"{_logs}/samples/{{run}}.log",
        conda:
            ENV
        threads: _e["threads"]
        resources:
            **_e["resources"]["sample"],
        shell:
            "OMP_NUM_THREADS={threads} eam sample --model {params.model} --model-path {params.model_path} "
            "--settings {input.settings} --prompts {input.prompts} --per-prompt {params.per_prompt} "
            "--steps {params.steps} --guidance-scale {params.guidance} --out {output} > {log} 2>&1"

    rule:
        name:
            f"{_e['prefix']}_pool"
        input:
            model=lambda w: model_files(w.bench, "base"),
            prompts=f"{_res}/prompts/eval.jsonl",
            settings=_section["settings"],
        output:
            f"{_res}/truth/pool.safetensors",
        wildcard_constraints:
            bench=re.escape(_bench),
        params:
            model=_e["model"],
            model_path=lambda w: model_dir(w.bench, "base"),
            per_prompt=(_e["truth"] or {}).get("pool_per_prompt"),
            steps=_section["eval"]["steps"],
            guidance=_section["guidance_scale"],
        log:
            f"{_logs}/truth/pool.log",
        conda:
            ENV
        threads: _e["threads"]
        resources:
            **_e["resources"]["sample"],
        shell:
            "OMP_NUM_THREADS={threads} eam sample --model {params.model} --model-path {params.model_path} "
            "--settings {input.settings} --prompts {input.prompts} --per-prompt {params.per_prompt} "
            "--steps {params.steps} --guidance-scale {params.guidance} --stream 1 --out {output} > {log} 2>&1"

    rule:
        name:
            f"{_e['prefix']}_tilt_truth"
        input:
            pool=f"{_res}/truth/pool.safetensors",
            base=f"{_res}/samples/base.safetensors",
            models=lambda w: made_weights(w.bench, [*FT[w.bench]["section"]["metrics"], w.reward, FT[w.bench]["features"]]),
        output:
            expand(f"{_res}/truth/{TRUTH}/{{f}}", f=TRUTH_FILES, allow_missing=True),
        wildcard_constraints:
            bench=re.escape(_bench),
        params:
            reward=lambda w: named(w.bench, w.reward),
            metrics=lambda w: metric_args(w.bench),
            features=lambda w: named(w.bench, FT[w.bench]["features"]),
            per_prompt=_section["eval"]["per_prompt"],
            out=lambda w, output: parent(output[0]),
        log:
            f"{_logs}/truth/{TRUTH}.log",
        conda:
            ENV
        threads: _e["threads"]
        resources:
            **_e["resources"]["score"],
        shell:
            "OMP_NUM_THREADS={threads} eam tilt-truth --pool {input.pool} --reward {params.reward} --lam {wildcards.lam} "
            "{params.metrics} --features {params.features} --base-samples {input.base} "
            "--per-prompt {params.per_prompt} --out {params.out} > {log} 2>&1"

    rule:
        name:
            f"{_e['prefix']}_score"
        input:
            samples=f"{_res}/samples/{{run}}.safetensors",
            base=f"{_res}/samples/base.safetensors",
            models=lambda w: made_weights(w.bench, [*FT[w.bench]["section"]["metrics"], FT[w.bench]["features"]]),
            pstar=pstar,
        output:
            f"{_res}/scores/{{run}}.json",
        wildcard_constraints:
            bench=re.escape(_bench),
        params:
            metrics=lambda w: metric_args(w.bench),
            features=lambda w: named(w.bench, FT[w.bench]["features"]),
            pstar=lambda w, input: f"--pstar {input.pstar}" if input.pstar else "",
        log:
            f"{_logs}/scores/{{run}}.log",
        conda:
            ENV
        threads: _e["threads"]
        resources:
            **_e["resources"]["score"],
        shell:
            "OMP_NUM_THREADS={threads} eam score --samples {input.samples} --base-samples {input.base} {params.metrics} "
            "--features {params.features} {params.pstar} --out {output} > {log} 2>&1"

    _top = f"lam{max(_section['lambdas'])}/seed{_section['seeds'][0]}"

    rule:
        name:
            f"{_e['prefix']}_report"
        input:
            runs=expand(f"{RESULTS}/{_bench}/runs/{{run}}/metrics.jsonl", run=_e["runs"]),
            scores=expand(f"{RESULTS}/{_bench}/scores/{{run}}.json", run=_e["runs"]),
            base=f"{RESULTS}/{_bench}/scores/base.json",
            truth=expand(f"{RESULTS}/{_bench}/truth/{TRUTH}/truth.json", reward=_section["rewards"],
                         lam=_section["lambdas"]) if _e["truth"] else [],
            grid=[f"{RESULTS}/{_bench}/samples/base.safetensors",
                  *(f"{RESULTS}/{_bench}/samples/{m}/{_section['rewards'][0]}/{_top}.safetensors"
                    for m in _section["methods"])],
        output:
            expand(f"{RESULTS}/{_bench}/report/{{f}}", f=[*REPORT_FILES, *(["verdict.md"] if _e["truth"] else [])]),
        params:
            runs=lambda w, input: " ".join(parent(p) for p in input.runs),
            truth=lambda w, input: f"--truth {' '.join(input.truth)}" if input.truth else "",
            grid=lambda w, input: grid_args(input.grid),
            out=lambda w, output: parent(output[0]),
        log:
            f"{RESULTS}/logs/{_bench}/report.log",
        conda:
            ENV
        shell:
            "eam finetune-report --runs {params.runs} --scores {input.scores} --base-scores {input.base} "
            "{params.truth} --grid {params.grid} --out {params.out} > {log} 2>&1"

    rule:
        name:
            f"{_e['prefix']}_all"
        input:
            getattr(rules, f"{_e['prefix']}_report").output,
