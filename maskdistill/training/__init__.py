"""What every training stage shares, one module per mechanism.

- :mod:`~maskdistill.training.loop`: the resumable loop (:func:`~maskdistill.training.loop.fit`);
- :mod:`~maskdistill.training.checkpoints`: checkpoints and the resume folder;
- :mod:`~maskdistill.training.rng`: per-step seeding and the RNG states a checkpoint keeps;
- :mod:`~maskdistill.training.schedules`: learning-rate schedules, parameter groups, EMA;
- :mod:`~maskdistill.training.metrics_log`: the per-step metrics log.

The trained network a stage hands on is a model file (:mod:`maskdistill.models.model_file`).
The package imports none of its modules, so a job's code fingerprint
(:mod:`maskdistill.workflow`) holds only those it uses: editing the loop reruns training jobs,
not prediction jobs.
"""
