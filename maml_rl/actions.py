"""What the sampler sends an environment for the policy's actions (and what the checker sends).

* a Box action is clipped to the space: a Gaussian policy's sample may leave it (0.36 for a
  ±0.1 box), and an environment need not accept or clip such an action itself. The batch keeps
  the unclipped sample, whose log-probability the policy gradient needs. The package's own
  families clip to the same bounds themselves (navigation to ±max_action, MuJoCo families to
  the actuator range after dividing by `action_scale`, Meta-World to ±1), so their trajectories
  are unchanged (tests/test_checker.py compares them with and without the clip);
* a Discrete action is the categorical policy's index 0..n-1 shifted by the space's `start`.

Other action spaces have no policy (MultiDiscrete, Dict, ...): `checker.check_family` refuses them.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def env_actions(actions: np.ndarray, space: gym.spaces.Space) -> np.ndarray:
    """The actions [*, *space.shape] an environment with `space` receives for the policy's."""
    if isinstance(space, gym.spaces.Discrete):
        return np.asarray(actions) + space.start if space.start else np.asarray(actions)
    if isinstance(space, gym.spaces.Box):
        return np.clip(actions, space.low, space.high)
    return np.asarray(actions)


def action_shape(space: gym.spaces.Space) -> tuple[int, ...]:
    """The shape of one action the policy samples for `space`: () for a Discrete space (an
    index), the Box's shape for a Box; ValueError for any other space (no policy samples it)."""
    if isinstance(space, gym.spaces.Discrete):
        return ()
    if isinstance(space, gym.spaces.Box):
        return tuple(space.shape)
    raise ValueError(f"no policy samples actions of {space}: a Box or Discrete space only")


def distribution_shape(space: gym.spaces.Space) -> tuple[int, ...]:
    """The trailing shape of the policy's distribution parameters for one observation: (n,),
    the logits, for a Discrete space of n actions; the Box's shape (mean and log-std)."""
    if isinstance(space, gym.spaces.Discrete):
        return (int(space.n),)
    return action_shape(space)
