# maskdistill: MaskDistill (arXiv:2206.06363) as a Snakemake workflow.
# Run `snakemake --cores N` (default config: the embedded demo); see README.md and docs/.
from snakemake.utils import min_version

from maskdistill.sweep import sweep_runs

min_version("9.0")


# config.yaml (the embedded demo) is the configuration only when no --configfile is given: a
# preset (configs/*.yaml) then stands alone on the schema's defaults, never on the demo's values
# (docs/workflow.md, "Configs and presets"); --config key=value applies on top of either.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


# a config with a `sweep:` section is several runs (maskdistill/sweep.py), else one
SWEEP_RUNS = sweep_runs(config)
if SWEEP_RUNS:

    include: "rules/sweep.smk"

else:

    include: "rules/run.smk"

    ALL_TARGETS = rules.outputs.input


rule all:
    default_target: True
    input:
        ALL_TARGETS,
    localrule: True
