"""Background work: Celery tasks, networks, training, evaluation and inference."""
