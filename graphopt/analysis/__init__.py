"""What a graph holds and how two graphs differ: statistics on networkx graphs, and diffs."""
