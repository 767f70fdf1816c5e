"""The shipped experiment configs (`*.yaml`), installed as the package data of
`maml_rl_experiments` so that `maml-rl train navigation` finds them after any install.

The scripts beside them (`reproduce.py`, `navigation_arms.py`) are run from a checkout; nothing
in `maml_rl` imports them."""
