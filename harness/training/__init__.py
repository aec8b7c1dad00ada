"""One training run: the loop, its metrics (a table) and the efficiency metrics' counts. It
knows nothing of Optuna or MLflow; they attach through its callback."""
