"""`make demo`: the whole chain (data, folds, training, submission, report) on generated data, above every stage."""
