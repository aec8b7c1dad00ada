"""Studies: which configuration runs next, the runner, which trials count, the end-of-study
table, and the MLflow logging of runs."""
