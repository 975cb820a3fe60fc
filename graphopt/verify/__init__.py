"""Numerical verification: inputs for both models, per-output comparison against a tolerance, the report."""
