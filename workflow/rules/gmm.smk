# Gaussian-mixture ground truth: every (case, variant, seed) fine-tuned against the exact tilted target.
check_files([f"config/gmm/{c}.yaml" for c in GMM["cases"]], "GMM case file")


rule gmm_run:
    input:
        case="config/gmm/{case}.yaml",
    output:
        f"{RESULTS}/gmm/{{case}}/{{variant}}/seed{{seed}}.json",
    params:
        args=gmm_method_args,
    log:
        f"{RESULTS}/logs/gmm/{{case}}/{{variant}}/seed{{seed}}.log",
    conda:
        ENV
    priority: 2  # the longest jobs after the digits chain's: started early, beside it
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    wildcard_constraints:
        variant="am|eam-residual|eam-corrected|eam-endpoint|eam-exact|eam-bridge",
        seed=r"\d+",
    shell:
        "OMP_NUM_THREADS={threads} eam gmm --case {input.case} {params.args} --seed {wildcards.seed} "
        "--quiet --out {output} > {log} 2>&1"


rule gmm_report:
    input:
        expand(f"{RESULTS}/gmm/{{case}}/{{variant}}/seed{{seed}}.json",
               case=GMM["cases"], variant=GMM["variants"], seed=GMM["seeds"]),
    output:
        table=f"{RESULTS}/gmm/report/table.md",
        figures=expand(f"{RESULTS}/gmm/report/{{case}}.png", case=GMM["cases"]),
    params:
        out=lambda w, output: parent(output.table),
    log:
        f"{RESULTS}/logs/gmm/report.log",
    conda:
        ENV
    shell:
        "eam gmm-report {input} --out {params.out} > {log} 2>&1"


rule gmm_all:
    input:
        rules.gmm_report.output,
