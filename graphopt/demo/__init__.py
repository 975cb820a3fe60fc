"""The offline demo: the seed post's workflow replayed on a detector built locally.

``detector`` builds an SSD/MobileNetV2 detector as a TF1 Hub-format module;
``workflow`` wraps it for serving as the seed did, saves it as-is, optimizes it
with the seed's seven GTT transforms through graphopt and returns what it measured.
"""
