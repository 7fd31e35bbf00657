"""One training job: build -> train -> write (``job``), and what it needs while it trains.

- ``job``: the recipe (:func:`~sweep.training.job.run`, :func:`~sweep.training.job.fit`)
- ``parts``: the build step (store, datamodule, model, loggers, callbacks)
- ``results``: the write step (history, metrics.json, the model, the W&B summary)
- ``epoch_stats``, ``kl_warmup``: what a run measures of itself
- ``scoring``, ``step_evaluation``: evaluation at epoch ends and between them (sweep.evaluation)
- ``checkpoint``, ``rng``, ``resume``: runs that survive a crash or a requeue
- ``progress``: the step progress bar on a terminal, or log lines where stderr is not one
- ``tracking``: the W&B run; ``distributed``: DDP; ``quiet``: known-harmless library messages

Training never imports the reports (sweep.report); the training command hands it the run page's
writer.
"""
