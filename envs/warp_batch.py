"""The "warp" stepper: all simulations of a MuJoCo batch env as one MuJoCo Warp batch.

MuJoCo Warp (``pip install "maml-rl[warp]"``: mujoco-warp 4.0.0 and warp-lang) steps
thousands of MuJoCo worlds at once on an NVIDIA GPU. This stepper puts the N·K environments of
a meta-batch into one Warp ``Data`` of N·K worlds on the policy's torch device; the arrays the
family reads (qpos, qvel, xpos, cfrc_ext) are zero-copy torch views of Warp's (``wp.to_torch``),
so observations, rewards, terminations and the task parameters are torch tensors on that
device, computed by the same family code as the C steppers' (`envs.mujoco_batch`): a sampling
step on a GPU does not copy anything to the host.

* What it is for: MuJoCo families on a GPU, where the CPU steppers cap a meta-iteration's
  speed. On the CPU device (Warp's "cpu", for development and the tests) it is much slower
  than the C steppers: use it there to check, not to train.
* Precision: MuJoCo Warp computes in float32; the C steppers in float64. From one state, one
  env step agrees to float32 round-off (observations 1e-4, rewards 1e-5). Half-cheetah's
  100-step returns agree to 1e-4; Ant's trajectories part within an episode, so its returns
  agree in the mean over trajectories, not one by one. One physics difference besides: with
  Ant's pyramidal friction cones, MuJoCo Warp (like MJX) orients the pyramid of a
  plane-capsule contact by a fixed axis when the capsule is within 30 degrees of the floor's
  normal, where MuJoCo C aligns it with the capsule (tests/test_warp.py has the figures).
* Determinism: on the CPU device every run is bit-identical (a resumed run repeats the
  uninterrupted one); on a GPU, Warp's atomic additions make runs differ in the last bits.
* Compile cost: the first use on a device compiles Warp's kernels, about 50-90 s on two CPU
  cores, cached in ``~/.cache/warp`` for later processes.

A step sets ``ctrl`` and runs ``frame_skip`` calls of ``mjw.step`` and, for families that read
contact forces (Ant), ``mjw.rne_postconstraint`` as Gymnasium runs ``mj_rnePostConstraint``;
on CUDA that control step is captured once as a CUDA graph and relaunched. A reset draws the
initial states on the host from Gymnasium's per-environment generators, exactly as the C
steppers do, and copies them to the device (once per episode). Environments whose episode
ended are stepped with the others but keep their state (the C steppers do not step them).
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
import torch

INSTALL_HINT = 'MuJoCo Warp is not installed: pip install "maml-rl[warp]"'

try:
    import mujoco_warp as mjw
    import warp as wp
except ImportError as error:  # the optional extra
    raise ImportError(INSTALL_HINT) from error

CONTACTS_PER_WORLD = 64
"""Contacts allocated per world (``nconmax``; the whole batch shares nconmax·B)."""
CONSTRAINTS_PER_WORLD = 256
"""Constraint rows allocated per world (``njmax``): Ant's contacts and joint limits need < 100."""


def warp_device(device: torch.device) -> Any:
    """The Warp device of a torch device ("cpu", "cuda:i")."""
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return wp.get_device(f"cuda:{index}")
    if device.type != "cpu":
        raise ValueError(f"the warp stepper runs on cpu or cuda devices, not {device}")
    return wp.get_device("cpu")


class WarpStepper:
    """B simulations of `model` in one MuJoCo Warp batch on `device` (`Simulations`).

    qpos [B, nq], qvel [B, nv], xpos [B, nbody, 3], cfrc_ext [B, nbody, 6]: float32 torch
    views of the Warp arrays, current after each `reset` and `step`.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        num_envs: int,
        frame_skip: int,
        contact_forces: bool,
        device: torch.device,
    ) -> None:
        # no banner and no line per kernel loaded (about 60 per process) on stdout: Warp's
        # log level is its own global setting, set when a stepper is built, not on import
        wp.config.log_level = max(wp.config.log_level, wp.LOG_WARNING)
        self.frame_skip, self.contact_forces = frame_skip, contact_forces
        self._wp_device = warp_device(torch.device(device))
        self.device = torch.device(str(self._wp_device))  # "cuda" -> "cuda:i"
        with wp.ScopedDevice(self._wp_device):
            self._model = mjw.put_model(model)
            self._data = mjw.put_data(
                model,
                mujoco.MjData(model),
                nworld=num_envs,
                nconmax=CONTACTS_PER_WORLD,
                njmax=CONSTRAINTS_PER_WORLD,
            )
        data = self._data
        self.qpos, self.qvel = wp.to_torch(data.qpos), wp.to_torch(data.qvel)
        self.xpos, self.cfrc_ext = wp.to_torch(data.xpos), wp.to_torch(data.cfrc_ext)
        self._ctrl = wp.to_torch(data.ctrl)
        self._graph: Any = None
        # CUDA: Warp's work on a stream of its own (a graph cannot be captured on torch's
        # default stream), ordered with torch's by events, without waiting on the host
        self._stream = wp.Stream(self._wp_device) if self._wp_device.is_cuda else None

    def _launch(self, work: Any) -> None:
        """Run `work()` (Warp calls only) on this device, after the torch work queued on it so
        far and before the torch work queued next."""
        if self._stream is None:  # the CPU device runs each launch as it comes
            with wp.ScopedDevice(self._wp_device):
                work()
            return
        torch_stream = wp.stream_from_torch(self.device)
        self._stream.wait_stream(torch_stream)
        with wp.ScopedDevice(self._wp_device), wp.ScopedStream(self._stream, sync_enter=False):
            work()
        torch_stream.wait_stream(self._stream)

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self._launch(lambda: mjw.reset_data(self._model, self._data))
        self.qpos.copy_(torch.as_tensor(qpos, dtype=torch.float32))
        self.qvel.copy_(torch.as_tensor(qvel, dtype=torch.float32))
        self._launch(lambda: mjw.forward(self._model, self._data))

    def _control_step(self) -> None:
        for _ in range(self.frame_skip):
            mjw.step(self._model, self._data)
        if self.contact_forces:
            mjw.rne_postconstraint(self._model, self._data)

    def _advance(self) -> None:
        """One control step; on CUDA the first runs eagerly (loading the kernels) and is then
        captured as a graph, which later steps relaunch."""
        if self._stream is None:
            self._control_step()
        elif self._graph is None:
            self._control_step()
            with wp.ScopedCapture(device=self._wp_device, stream=self._stream) as capture:
                self._control_step()
            self._graph = capture.graph
        else:
            wp.capture_launch(self._graph, stream=self._stream)

    def step(self, ctrl: torch.Tensor, live: torch.Tensor) -> None:
        frozen = self.qpos.clone(), self.qvel.clone()
        self._ctrl.copy_(ctrl)
        self._launch(self._advance)
        # an ended episode keeps its state, as the C steppers (which skip it) keep it
        self.qpos.copy_(torch.where(live[:, None], self.qpos, frozen[0]))
        self.qvel.copy_(torch.where(live[:, None], self.qvel, frozen[1]))

    def close(self) -> None:
        self._graph = None
