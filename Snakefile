# maskdistill: MaskDistill (arXiv:2206.06363) as a Snakemake workflow.
# Run `snakemake --cores N` (default config: the embedded demo); see README.md and docs/.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml (the embedded demo) is the configuration only when no --configfile is given: a
# preset (configs/*.yaml) then stands alone on the schema's defaults, never on the demo's values
# (docs/workflow.md, "Configs and presets"); --config key=value applies on top of either.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo_data.smk"
include: "rules/pretrain.smk"
include: "rules/discover.smk"
include: "rules/cluster.smk"
include: "rules/distill.smk"
include: "rules/select.smk"
include: "rules/segment.smk"
include: "rules/evaluate.smk"
include: "rules/visualize.smk"
include: "rules/run_view.smk"


# cheap steps (tables, pictures: seconds each) run where Snakemake runs, never as cluster jobs
localrules:
    all,
    distill_merge,
    evaluate_ablation,
    evaluate_table,
    run_view,
    visualize_sheet,
    visualize_plots,


onsuccess:
    warn_about_skipped_images()


onerror:
    warn_about_skipped_images()


rule all:
    input:
        final_outputs(),
