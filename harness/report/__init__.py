"""Study reports: an HTML page and a PDF with Seaborn figures, from MLflow and Optuna."""

from harness.report.render import build_report

__all__ = ["build_report"]
