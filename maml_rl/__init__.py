"""maml_rl: Model-Agnostic Meta-Learning for RL, vectorized in PyTorch."""

__version__ = "0.1.0"
