"""Browsing a study: MLflow's UI and Optuna's read-only dashboard, supervised."""
