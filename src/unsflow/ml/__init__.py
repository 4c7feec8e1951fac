"""Machine learning around the pipeline: the model store, training (``unsflow train``)."""
