# `eam bench` as rules: per-iteration cost of AM and EAM against the cost-model floor, the speed
# knobs, and where the time goes; one folder per configured benchmark under results/bench/. Bench
# jobs run one at a time, after every other job of the DAG.
# model_path / reward_path "random:ARCH" are published architectures with random weights
# (`eam random-weights`), so GPU timings at SD3-medium / SD1.5 shapes need no download.
for _name, _b in BENCH.items():
    check_files([_b["prompts"], _b["settings"], *([_b["knobs"]] if _b.get("knobs") else [])], f"bench {_name} input file")
    for _p in (_b["model_path"], _b.get("reward_path") or ""):
        if _p.startswith("random:") and _p[7:] not in RANDOM_MARKER:
            raise WorkflowError(f"bench {_name}: unknown architecture {_p!r}; known: "
                                + ", ".join(f"random:{a}" for a in RANDOM_MARKER))


# Timings are only meaningful on an otherwise idle machine: each bench job waits for every other job
# of the DAG (the other benchmarks' targets, all weights) and for the bench before it.
OTHER_TARGETS = [*(rules.gmm_all.input if config.get("gmm") else []),
                 *(f for e in FT.values() for f in getattr(rules, f"{e['prefix']}_all").input)]


rule bench_weights:
    output:
        f"{BRES}/weights/{{arch}}/{{marker}}",
    wildcard_constraints:
        arch="|".join(RANDOM_MARKER),
        marker="model_index.json|config.json",
    params:
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/bench/weights/{{arch}}_{{marker}}.log",
    conda:
        ENV
    threads: 4
    resources:
        gpu=1,
        runtime=30,
        mem_mb=64000,
    shell:
        "eam random-weights --arch {wildcards.arch} --out {params.out} > {log} 2>&1"


rule bench_prompts:
    input:
        lambda w: BENCH[w.name]["prompts"],
    output:
        f"{BRES}/{{name}}/prompts/train.jsonl",
    params:
        domain=lambda w: BENCH[w.name].get("domain", "text"),
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/bench/{{name}}_prompts.log",
    conda:
        ENV
    shell:
        "eam prompts {input} --domain {params.domain} --out {params.out} > {log} 2>&1"


rule bench:
    input:
        after=bench_inputs,
        prompts=f"{BRES}/{{name}}/prompts/train.jsonl",
        settings=lambda w: BENCH[w.name]["settings"],
        knobs=lambda w: BENCH[w.name].get("knobs") or [],
    output:
        expand(f"{BRES}/{{{{name}}}}/{{f}}", f=["bench.json", "bench.md", "bench.png"]),
    params:
        model=lambda w: BENCH[w.name]["model"],
        model_path=lambda w: bench_path(BENCH[w.name]["model_path"]),
        reward=lambda w: BENCH[w.name]["reward"],
        reward_path=lambda w: f"--reward-path {bench_path(BENCH[w.name]['reward_path'])}" if BENCH[w.name].get("reward_path") else "",
        knobs=lambda w, input: f"--knobs {input.knobs}" if input.knobs else "",
        profile=lambda w: "--profile" if BENCH[w.name].get("profile") else "",
        warmup=lambda w: BENCH[w.name].get("warmup", 2),
        repeats=lambda w: BENCH[w.name].get("repeats", 5),
        out=lambda w, output: parent(output[0]),
    log:
        f"{RESULTS}/logs/bench/{{name}}.log",
    conda:
        ENV
    threads: lambda w: BENCH[w.name].get("threads", 1)
    resources:
        gpu=lambda w: BENCH[w.name].get("gpus", 0),
        runtime=lambda w: BENCH[w.name].get("runtime_min", 60),
        mem_mb=lambda w: BENCH[w.name].get("mem_mb", 8000),
    shell:
        "OMP_NUM_THREADS={threads} eam bench --model {params.model} --model-path {params.model_path} "
        "--reward {params.reward} {params.reward_path} --prompts {input.prompts} --settings {input.settings} "
        "{params.knobs} {params.profile} --warmup {params.warmup} --repeats {params.repeats} "
        "--out {params.out} > {log} 2>&1"


rule bench_all:
    input:
        expand(f"{BRES}/{{name}}/bench.md", name=list(BENCH)),
