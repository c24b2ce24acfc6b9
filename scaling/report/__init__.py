"""What a fit reports: comparison with the truth, pictures, MLflow tracking."""
