"""Evaluation metrics and evaluators."""
