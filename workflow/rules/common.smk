import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError


def validate_config(config, schema_path):
    """The config against its schema, the first problem as one line naming the key (config/README.md lists them)."""
    import jsonschema
    import yaml

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        key = ".".join(str(k) for k in error.absolute_path) or "(top level)"
        raise WorkflowError(f"config {key}: {error.message.splitlines()[0]} (see config/README.md)")


TRAINED_REWARDS = ["digit_classifier", "heldout_classifier", "digit_clip"]  # digits rewards whose weights the DAG trains


def check_registered_names(config):
    """The digits and text-to-image sections' model and reward names against the registry (`eam list`), in one
    line; where Snakemake runs without `eam` importable the jobs check them."""
    digits, t2i = config.get("digits") or {}, config.get("t2i") or {}
    if not (digits or t2i):
        return
    try:
        from eam.registry import catalogue

        cat = catalogue()
    except ImportError:  # a bare Snakemake (e.g. --sdm conda): eam or its dependencies are not importable here
        return

    def registered(kind, domain, **traits):
        return [n for n, t in cat[kind].items() if t["domain"] == domain and all(t[k] == v for k, v in traits.items())]

    # a digits reward with weights must be one the DAG trains (TRAINED_REWARDS); the others need none
    digit_rewards = [n for n in registered("reward", "digits") if n in TRAINED_REWARDS or not cat["reward"][n]["weights"]]
    checks = [(f"digits.{key}", digits.get(key, []), digit_rewards, "digits reward") for key in ("rewards", "metrics")]
    checks += [("t2i.model", [t2i["model"]] if "model" in t2i else [], registered("model", "image"), "image model"),
               ("t2i.rewards", t2i.get("rewards", []), registered("reward", "image"), "image reward"),
               ("t2i.metrics", t2i.get("metrics", []), registered("reward", "image"), "image reward"),
               ("t2i.features", [t2i["features"]] if "features" in t2i else [],
                registered("reward", "image", features=True), "image reward with features"),
               ("t2i.weights", list(t2i.get("weights") or {}), registered("reward", "image"), "image reward")]
    for key, given, allowed, what in checks:
        for name in given:
            if name not in allowed:
                raise WorkflowError(f"config {key}: {name!r} is not a registered {what}; registered: "
                                    f"{', '.join(allowed)} (`eam list`)")


# before anything below reads the config; the schema beside the Snakefile, whatever --directory is
validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
check_registered_names(config)


RESULTS = "results"
ENV = "../../environment.yml"  # every rule's software (the same pins as pyproject.toml), for --sdm conda
REPORT_FILES = ["reward_vs_time.png", "reward_vs_nfe.png", "tradeoff.png", "samples.png", "table.csv", "table.md",
                "table.tex", "time_to_threshold.csv", "time_to_quality.md", "time_to_quality.png"]
MODEL_FILES = ["config.json", "model.safetensors"]
RUN = "{method}/{reward}/lam{lam}/seed{seed}"
TRUTH = "{reward}/lam{lam}"
TRUTH_FILES = ["truth.json", "pstar_a.safetensors", "pstar_b.safetensors"]


def parent(path):
    """The folder of an input or output file (a command's --out or --model-path)."""
    return str(Path(path).parent)


def grid_args(paths):
    """`--grid` of the report: the base's samples, then each method's (paths .../samples/METHOD/REWARD/lamL/seedS),
    labelled METHOD_lamL."""
    labels = (f"{Path(p).parts[-4].upper()}_{Path(p).parts[-2]}" for p in paths[1:])
    return " ".join([f"base={paths[0]}", *(f"{label}={p}" for label, p in zip(labels, paths[1:]))])


def check_files(paths, what):
    """Fail at parse time, in one line, when a configured input file is missing."""
    for p in paths:
        if not Path(p).is_file():
            raise WorkflowError(f"{what} {p} not found; add it or remove it from config/config.yaml")


def _settings(path):
    import yaml

    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else path
        raise WorkflowError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None


def check_settings(path):
    """A fine-tuning settings file, checked when the DAG is built rather than when the first job reads it."""
    settings, package = _settings(path), _eam_package()
    if package is None:
        return
    try:
        package.FinetuneConfig.from_dict(settings)
    except (ValueError, TypeError) as e:
        raise WorkflowError(f"{path}: {e}") from None


def _eam_package():
    """The installed `eam` package, or None where Snakemake runs without it (e.g. --sdm conda from a bare
    Snakemake): then settings are checked by the first job that reads them, and defaults come from the schema's
    documentation (the EAM variant `residual`)."""
    try:
        import eam.finetune

        return eam.finetune
    except ImportError:
        return None


def settings_anchor_batches(path):
    """The anchor batches a settings file asks of `corrected` (eam.anchor_batches; null: the default, §5.6)."""
    return (_settings(path).get("eam") or {}).get("anchor_batches")


def settings_base_score(path):
    """The EAM variant a fine-tuning settings file selects (its eam.base_score, else the default)."""
    chosen = (_settings(path).get("eam") or {}).get("base_score")
    if chosen:
        return chosen
    package = _eam_package()
    return package.EAMConfig().base_score if package else "residual"


# `corrected`: its correction network is fitted as long as a run (docs/method.md §5.5; its fit error is taken out to
# first order by the anchor, §5.6)
CORRECTION_FIT = 1


def correction_fit_args(path):
    """The correction fit's length: CORRECTION_FIT times the settings' NFE budget, or else its iterations."""
    settings, package = _settings(path), _eam_package()
    budget, iters = settings.get("budget_nfe"), settings.get("iters")
    if package is not None:
        cfg = package.FinetuneConfig.from_dict(settings)
        budget, iters = cfg.budget_nfe, cfg.iters
    # its evaluation reward means nothing (λ = 0 on base samples): evaluated only at the start and the end
    if budget is not None:
        n = CORRECTION_FIT * int(budget)
        return f"--set budget_nfe={n} --set eval_every_nfe={n}"
    return f"--iters {CORRECTION_FIT * int(iters)} --set eval_every={CORRECTION_FIT * int(iters)}" if iters is not None else ""


onstart:
    # the slurm executor otherwise fails on its first submission with "No such file or directory: 'sacct'"
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name == "slurm" and not shutil.which("sbatch"):
        raise WorkflowError(
            "the slurm profile needs SLURM's commands (sbatch, squeue) on PATH and none are installed here; "
            "run `snakemake --cores N all` on this machine, or submit from a SLURM login node"
        )


# -- fine-tuning benchmarks (workflow/rules/finetune.smk): the digits default and text-to-image ------------
DIG = config.get("digits") or {}
T2I = config.get("t2i") or {}


def run_list(section, methods, seeds, control_seeds):
    """method × reward × λ × seed; λ = 0 (the no-reward control) on the first `control_seeds` seeds (null: all)."""
    return [RUN.format(method=m, reward=r, lam=lam, seed=s) for m in methods for r in section["rewards"]
            for lam in section["lambdas"] for s in (seeds[:control_seeds] if lam == 0 and control_seeds else seeds)]


def runs_of(section):
    """A benchmark's runs: its methods on every seed, its ablations (e.g. eam-endpoint: EAM with the old
    base-score estimator) on the first seed only."""
    seeds = section["seeds"]
    return [*run_list(section, section["methods"], seeds, section.get("control_seeds")),
            *run_list(section, section.get("ablations") or [], seeds[:1], None)]


# One entry per benchmark, keyed by its results folder: what its rules differ in. A weights folder under
# results/ is made by the DAG (an input of the jobs that read it); any other path or hub id is read as it is.
FT = {}
if DIG:
    FT["digits"] = dict(
        prefix="digits", section=DIG, model="digits_flow", model_path=f"{RESULTS}/digits/models/base",
        prompts=[DIG["prompts"]], eval_prompts=[], domain="digits", features="digit_classifier", truth=DIG["truth"],
        weights={n: f"{RESULTS}/digits/models/{n}" for n in TRAINED_REWARDS},  # trained by digits.smk
        threads=1, resources={"finetune": {"runtime": 60}, "correction": {"runtime": 60}, "anchor": {"runtime": 30},
                              "sample": {}, "score": {}})
if T2I:
    if T2I["name"] in ("digits", "gmm", "bench", "logs"):
        raise WorkflowError(f"config t2i.name: {T2I['name']!r} is another benchmark's results folder; choose another")
    _gpu = {"gpu": T2I.get("gpus", 1), "mem_mb": T2I.get("mem_mb", 64000)}
    _runtime = T2I.get("runtime_min") or {}
    _train = {**_gpu, "runtime": _runtime.get("finetune", 720)}
    FT[T2I["name"]] = dict(
        prefix="t2i", section=T2I, model=T2I["model"], model_path=T2I["model_path"], prompts=T2I["prompts"]["train"],
        eval_prompts=T2I["prompts"].get("eval", []), domain="text", features=T2I["features"], truth=T2I.get("truth"),
        weights=T2I.get("weights") or {}, threads=4,
        resources={"finetune": _train, "correction": _train, "anchor": _train,
                   "sample": {**_gpu, "runtime": _runtime.get("sample", 120)}, "score": {**_gpu, "runtime": 60}})
for _e in FT.values():
    _e["runs"] = runs_of(_e["section"])


def named(bench, name):
    """`NAME=FOLDER` for a reward with a configured weights folder, else `NAME` (analytic, or the hub cache)."""
    path = FT[bench]["weights"].get(name)
    return f"{name}={path}" if path else name


def made_weights(bench, names):
    """The weight files among `names` that the DAG makes (inputs of the jobs that read them)."""
    paths = (FT[bench]["weights"].get(n) for n in sorted(set(names)))
    return [f"{p}/model.safetensors" for p in paths if p and p.startswith(f"{RESULTS}/")]


def metric_args(bench):
    return " ".join(f"--metric {named(bench, n)}" for n in FT[bench]["section"]["metrics"])


def model_dir(bench, run):
    """The model a run's samples come from: the base, or a fine-tuned run folder."""
    return FT[bench]["model_path"] if run == "base" else f"{RESULTS}/{bench}/runs/{run}"


def model_files(bench, run):
    """The model's weights file where the DAG makes it (the digits base, every fine-tuned run)."""
    path = model_dir(bench, run)
    return [f"{path}/model.safetensors"] if path.startswith(f"{RESULTS}/") else []


def weights_flag(bench, name, flag):
    """`FLAG FOLDER` for a reward with a configured weights folder; nothing for analytic rewards or the hub cache."""
    path = FT[bench]["weights"].get(name)
    return f"{flag} {path}" if path else ""


def pstar(w):
    """The p* set a run's samples are compared with (none for the base, or without a `truth` section)."""
    if w.run == "base" or not FT[w.bench]["truth"]:
        return []
    _, reward, lam, _ = w.run.split("/")
    return f"{RESULTS}/{w.bench}/truth/{reward}/{lam}/pstar_a.safetensors"


def needs_correction(bench, method):
    """Whether an EAM run (eam: the settings file's variant; eam-VARIANT) uses the correction network."""
    if not method.startswith("eam"):
        return False
    return (method.partition("-")[2] or settings_base_score(FT[bench]["section"]["settings"])) == "corrected"


def needs_anchor(bench, method):
    """Whether a `corrected` run subtracts the shared anchor (unless its settings set eam.anchor_batches: 0)."""
    return needs_correction(bench, method) and settings_anchor_batches(FT[bench]["section"]["settings"]) != 0


# -- Gaussian mixtures (workflow/rules/gmm.smk) --------------------------------------------------------
GMM = config.get("gmm") or {}


def gmm_method_args(wildcards):
    method, _, base_score = wildcards.variant.partition("-")
    args = f"--method {method}"
    if base_score:
        args += f" --base-score {base_score}"
        if base_score in ("endpoint", "residual", "corrected"):
            args += f" --delta {GMM.get('delta', 0.05)}"
    if GMM.get("iters"):
        args += f" --iters {GMM['iters']}"
    if GMM.get("eval_every"):
        args += f" --set eval_every={GMM['eval_every']}"
    return args


# -- eam bench (workflow/rules/bench.smk) --------------------------------------------------------------
BENCH = {name: b for name, b in (config.get("bench") or {}).items() if b}  # a null entry is switched off
BRES = f"{RESULTS}/bench"
RANDOM_MARKER = {"sd3-medium": "model_index.json", "sd15": "model_index.json", "clipscore": "config.json",
                 "pickscore": "config.json"}


def bench_path(path):
    """The folder a model_path / reward_path names ("random:ARCH": the random-weights folder)."""
    return f"{BRES}/weights/{path[7:]}" if path and path.startswith("random:") else path


def weight_files(name):
    """Weight folders the DAG makes: random architectures, and folders under results/ (e.g. the
    digits base model); other paths (HF repo ids, downloaded folders) are read as they are."""
    files = []
    for path in (BENCH[name]["model_path"], BENCH[name].get("reward_path")):
        if path and path.startswith("random:"):
            files.append(f"{bench_path(path)}/{RANDOM_MARKER[path[7:]]}")
        elif path and path.startswith(f"{RESULTS}/"):
            files.append(f"{path}/config.json")
    return files


def bench_inputs(w):
    names = list(BENCH)
    before = names[: names.index(w.name)]
    return [*OTHER_TARGETS, *(f for n in names for f in weight_files(n)),
            *(f"{BRES}/{n}/bench.json" for n in before[-1:])]
