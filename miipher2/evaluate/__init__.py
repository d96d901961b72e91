"""Objective evaluation: metrics, baselines, reports."""
