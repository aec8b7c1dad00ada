"""A study's stores (Optuna's storage, MLflow's tracking store): their layout, set-up lock,
checks, repair, URL checks and retries."""
