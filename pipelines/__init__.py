"""Training: model configs, every fold of one model, and what a fold fit writes.

The stages above call `pipelines.run.train_model` (distill trains its students with it, like `make train`) and
`pipelines.config.resolve`; importing one module of the package (the model builder, for prediction) loads no
training. No names are re-exported here: every import names the module it reaches, so the floor rules see it.
"""
