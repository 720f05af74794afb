# A sweep (config key `sweep`, maskdistill/sweep.py): the whole workflow once per run, as a
# module with that run's config whose rules carry the prefix run<i>_. Runs that agree on a
# stage's settings name the same content-addressed cache folder, so their rules for it are
# equal: the rule order below lets the first run's rule make it, and it is made once. The
# report compares the runs: per swept setting, every stage's mIoU in a table and against the
# setting's values in a plot (results/<run_name>/sweep/<setting>/), and one table of every run.
import re
from pathlib import Path

from maskdistill.run_view import skipped_image_notes
from maskdistill.sweep import SWEEP_FOLDER, runs_by_setting
from maskdistill.workflow import cli_flags, console_warning

SWEEP_RESULTS = Path(config["results_dir"])
SWEEP_DIR = SWEEP_RESULTS / config["run_name"] / SWEEP_FOLDER
SWEEP_PREFIXES = {name: f"run{index}_" for index, name in enumerate(SWEEP_RUNS)}
SWEEP_SETTINGS = runs_by_setting(config)

for sweep_index, (sweep_run, run_config) in enumerate(SWEEP_RUNS.items()):
    run_module = f"run{sweep_index}"
    run_prefix = SWEEP_PREFIXES[sweep_run]

    module:
        name: run_module
        snakefile:
            "run.smk"
        config:
            run_config

    use rule * from run_module as run_prefix*


# every rule of the first run before the same rule of the others (`ruleorder:` for each rule)
for base_rule in [r.name for r in workflow.rules if r.name.startswith("run0_")]:
    workflow.ruleorder(
        *(
            prefix + base_rule.removeprefix("run0_")
            for prefix in SWEEP_PREFIXES.values()
        )
    )

# the comparisons of the report: one per swept setting (its runs by value), and `runs`, every
# run labelled by its setting and value
SWEEP_GROUPS = SWEEP_SETTINGS | {
    "runs": {
        f"{setting} {value}": run
        for setting, runs in SWEEP_SETTINGS.items()
        for value, run in runs.items()
    }
}
# the runs are compared on their metrics: only when they have ground truth (an ablation table)
SWEEP_REPORTS = (
    [
        SWEEP_DIR / group / name
        for group in SWEEP_GROUPS
        for name in ("compare.md", "compare.png")
    ]
    if any(str(path).endswith("ablation.md") for path in rules.run0_outputs.input)
    else []
)


rule sweep_compare:
    input:
        lambda w: [
            SWEEP_RESULTS / run / "evaluate" / "ablation.json"
            for run in SWEEP_GROUPS[w.group].values()
        ],
    output:
        table=SWEEP_DIR / "{group}" / "compare.md",
        plot=report(
            SWEEP_DIR / "{group}" / "compare.png",
            caption="../report/sweep_compare.rst",
            category="sweep",
        ),
    log:
        SWEEP_DIR / "logs" / "{group}.log",
    wildcard_constraints:
        group="|".join(re.escape(group) for group in SWEEP_GROUPS),
    localrule: True
    conda:
        "../envs/maskdistill.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        setting=lambda w: "run" if w.group == "runs" else w.group,
        runs=lambda w: cli_flags(
            {
                "run": [
                    f"{value}={SWEEP_RESULTS / run}"
                    for value, run in SWEEP_GROUPS[w.group].items()
                ]
            }
        ),
        out_dir=lambda w: SWEEP_DIR / w.group,
    shell:
        "maskdistill evaluate compare --setting {params.setting:q} {params.runs}"
        " --out-dir {params.out_dir:q} 2> {log:q}"


# the target `all` (Snakefile): every run's outputs and the report
ALL_TARGETS = [
    getattr(rules, f"{prefix}outputs").input for prefix in SWEEP_PREFIXES.values()
] + SWEEP_REPORTS


# each run's discover shards, whose skip lists (and those in the run folder) are named on the
# console at the end (on_bad_image: skip)
SWEEP_SHARDS = {
    run: [p for p in getattr(rules, f"{prefix}outputs").input if str(p).endswith(".h5")]
    for run, prefix in SWEEP_PREFIXES.items()
}


onsuccess:
    for run, shards in SWEEP_SHARDS.items():
        for note in skipped_image_notes(shards, SWEEP_RESULTS / run):
            console_warning(note)


onerror:
    for run, shards in SWEEP_SHARDS.items():
        for note in skipped_image_notes(shards, SWEEP_RESULTS / run):
            console_warning(note)
