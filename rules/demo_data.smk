# The embedded demo dataset (VOC layout + COCO JSON, full ground truth), generated when missing.


rule make_demo_data:
    output:
        directory(DATASET["root"]),
    log:
        LOGS / "make_demo_data.log",
    benchmark:
        BENCHMARKS / "make_demo_data.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        seed=config["demo_data"]["seed"],
        num_train=config["demo_data"]["num_train"],
        num_val=config["demo_data"]["num_val"],
    shell:
        "maskdistill make-demo-data --out {output:q} --seed {params.seed}"
        " --num-train {params.num_train} --num-val {params.num_val} 2> {log:q}"
