"""Evaluation harness: soft against token reasoning (accuracy, pass@k, length, plots)."""
