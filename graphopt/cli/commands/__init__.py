"""One module per built-in command, each with ``configure(parser)`` and ``run(args, ctx)``.

Modules here import nothing heavy at module level (no TensorFlow), so that
``graphopt --help`` answers instantly; TensorFlow is imported inside ``run``.
"""
