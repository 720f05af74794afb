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
    threads: RESOURCES["make_demo_data"]["threads"]
    resources:
        mem_mb=RESOURCES["make_demo_data"]["mem_mb"],
        runtime=RESOURCES["make_demo_data"]["runtime"],
    params:
        code=code_fingerprint("maskdistill.commands.demo_data"),
        seed=config["demo_data"]["seed"],
        num_train=config["demo_data"]["num_train"],
        num_val=config["demo_data"]["num_val"],
    shell:
        "maskdistill make-demo-data --out {output:q} --seed {params.seed}"
        " --num-train {params.num_train} --num-val {params.num_val} 2> {log:q}"
