# One run of the pipeline: every stage's rules for one config. The Snakefile includes it once
# (a plain config) or once per run of a sweep, as a module with that run's config
# (rules/sweep.smk).


include: "common.smk"
include: "demo_data.smk"
include: "pretrain.smk"
include: "discover.smk"
include: "cluster.smk"
include: "distill.smk"
include: "select.smk"
include: "segment.smk"
include: "evaluate.smk"
include: "visualize.smk"
include: "run_view.smk"


onsuccess:
    warn_about_skipped_images(DISCOVER_SHARDS, RUN)


onerror:
    warn_about_skipped_images(DISCOVER_SHARDS, RUN)


# every output of the run (`snakemake outputs`; in a sweep, run<i>_outputs); the target `all`
# of the Snakefile asks for these
rule outputs:
    input:
        final_outputs(),
    localrule: True
