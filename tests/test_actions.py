"""`maml_rl.actions`: what an environment receives for the policy's actions, and the shapes of
a policy's actions and distribution parameters per action space."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from maml_rl.actions import action_shape, distribution_shape, env_actions


def test_box_actions_are_clipped_to_the_space_and_keep_their_shape() -> None:
    space = gym.spaces.Box(-0.1, 0.1, shape=(2,))
    actions = np.array([[0.36, -0.5], [0.05, 0.0]])
    clipped = env_actions(actions, space)  # to the space's float32 bounds
    np.testing.assert_array_equal(clipped, [[space.high[0], space.low[1]], [0.05, 0.0]])
    assert action_shape(space) == distribution_shape(space) == (2,)


def test_discrete_actions_are_indices_shifted_by_the_start() -> None:
    space = gym.spaces.Discrete(3, start=-1)
    np.testing.assert_array_equal(env_actions(np.array([0, 2]), space), [-1, 1])
    assert action_shape(space) == () and distribution_shape(space) == (3,)


def test_spaces_without_a_policy_are_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="a Box or Discrete space only"):
        action_shape(gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(ValueError, match="a Box or Discrete space only"):
        distribution_shape(gym.spaces.MultiBinary(4))
