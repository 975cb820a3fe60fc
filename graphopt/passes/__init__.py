"""graphopt's built-in Python passes, one module per family, and the pass interface (base.py)."""
