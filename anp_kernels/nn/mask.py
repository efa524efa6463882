"""BetaBernoulliMask: the learned per-unit pruning mask of ANP-VS (Beta-Bernoulli dropout)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import _rng, ops
from ..ops.channel_scale import broadcast_over_channels
from ..ops.channel_sparse_conv import trust_index

INIT_A_UC = -1.0  # softplus(-1) = 0.313: the original code's a (2.0 for its VGG conv masks)
INIT_B_UC = 0.5413  # softplus(0.5413) = 1.0


def a_from(a_uc: torch.Tensor) -> torch.Tensor:
    """The Kumaraswamy a of raw parameters: softplus(max(a_uc, -10)), as in the ANP-VS code."""
    return F.softplus(a_uc.clamp(min=-10.0))


def b_from(b_uc: torch.Tensor) -> torch.Tensor:
    """The Kumaraswamy b of raw parameters: softplus(clip(b_uc, -10, 50)), as in the ANP-VS code."""
    return F.softplus(b_uc.clamp(-10.0, 50.0))


class BetaBernoulliMask(nn.Module):
    """Per-unit mask z over dim 1, with keep probability pi ~ Kumaraswamy(a, b).

    a = softplus(max(a_uc, -10)), b = softplus(clip(b_uc, -10, 50)), as in the ANP-VS code.
    Training: a relaxed Bernoulli mask per example (one pi draw per unit, shared by the batch),
    sampled inside the fused kernel. Eval: the deterministic E[pi], 0 where E[pi] <= threshold.
    Prior Beta(alpha, 1): `kl()` is the closed-form KL summed over units.

    a and b are > 0 by construction, so the module calls the ops with check_values=False: no
    check reads them (on a GPU each would stall the step on a host-device synchronisation).
    Non-finite raw parameters (a diverged run) make the loss non-finite, which `anp train` reports.
    """

    def __init__(self, num_features: int, alpha: float = 1e-4, temperature: float = 0.1, threshold: float = 1e-3,
                 init_a: float = INIT_A_UC, init_b: float = INIT_B_UC):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.num_features, self.alpha, self.temperature, self.threshold = num_features, alpha, temperature, threshold
        self.a_uc = nn.Parameter(torch.full((num_features,), float(init_a)))
        self.b_uc = nn.Parameter(torch.full((num_features,), float(init_b)))
        self.generator: torch.Generator | None = None  # the seed source; None = torch's global RNG
        self._shared: dict | None = None  # under shared_mask_sample: batch size -> the step's seed (and sample)
        self._shared_params: dict = {}  # under shared_mask_sample: the block's (a, b), per parameter version
        self._eval_cache: tuple | None = None  # (parameter versions, detached eval scale, kept indices)

    # ---- parameters
    def a(self) -> torch.Tensor:
        return a_from(self.a_uc)

    def b(self) -> torch.Tensor:
        return b_from(self.b_uc)

    def _params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b); under `shared_mask_sample` computed once for all passes of the block (per grad
        mode, while the raw parameters are unchanged): one softplus each instead of one per pass."""
        if self._shared is None or torch.compiler.is_compiling():  # traced: the compiler fuses them anyway
            return self.a(), self.b()
        key = self._params_key()
        if key not in self._shared_params:
            self._shared_params[key] = (self.a(), self.b())
        return self._shared_params[key]

    def _params_key(self) -> tuple:
        return "params", self.a_uc._version, self.b_uc._version, torch.is_grad_enabled()

    def expected_keep(self) -> torch.Tensor:
        return ops.expected_keep(self.a(), self.b(), check_values=False)

    def eval_scale(self) -> torch.Tensor:
        """The test-time scale: E[pi] with values <= threshold set to 0.

        Cached per parameter version when no gradient to a, b is wanted (attacks call the eval
        network thousands of times; see `frozen`).
        """
        wants_grad = torch.is_grad_enabled() and (self.a_uc.requires_grad or self.b_uc.requires_grad)
        if wants_grad or torch.compiler.is_compiling():  # traced: from a and b as they are, not the cache
            return ops.eval_mask(self.a(), self.b(), self.threshold, check_values=False)
        return self._eval_state()[0]

    def kl(self) -> torch.Tensor:
        return ops.kl_kumaraswamy_beta(*self._params(), self.alpha, check_values=False)

    def keep_index(self) -> torch.Tensor:
        """Sorted int64 indices of the kept units (E[pi] > threshold); cached until a or b change."""
        return self._eval_state()[1]

    def _eval_key(self) -> tuple:
        return self.a_uc._version, self.b_uc._version, self.a_uc.data_ptr(), self.b_uc.data_ptr(), self.threshold

    def _eval_fresh(self) -> bool:
        return self._eval_cache is not None and self._eval_cache[0] == self._eval_key()

    def _eval_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The detached eval scale and the kept units' indices (where it is > 0, i.e. E[pi] >
        threshold), computed together and cached until a, b or the threshold change.

        Under torch.compile the cache is read as it is (the kept indices fix the graph's shapes;
        finding them is data-dependent): a compiled model computes the channels kept at the last
        eager refresh (a forward, `refresh_eval_states`, `attacks.frozen`), with the scale values
        taken from a and b as they are."""
        if torch.compiler.is_compiling():
            if self._eval_cache is None:
                raise RuntimeError("a masked model needs one eager forward (or nn.mask.refresh_eval_states) "
                                   "before torch.compile traces it: the kept channels fix its shapes")
            return self._eval_cache[1], self._eval_cache[2]
        if not self._eval_fresh():
            with torch.inference_mode(False), torch.no_grad():  # cached: usable outside inference mode too
                scale = ops.eval_mask(self.a(), self.b(), self.threshold, check_values=False)
                self._set_eval_state(scale, scale.nonzero().squeeze(1))
        return self._eval_cache[1], self._eval_cache[2]

    def _set_eval_state(self, scale: torch.Tensor, kept: torch.Tensor) -> None:
        trust_index(kept, self.num_features)  # sorted, unique, in range: nonzero's output
        self._eval_cache = (self._eval_key(), scale, kept)

    def num_active(self) -> int:
        return int(self.keep_index().numel())

    # ---- sampling
    def _seed_tensor(self) -> torch.Tensor:
        if self.generator is not None and torch.compiler.is_compiling():
            raise RuntimeError("a mask generator cannot be called inside torch.compile: run the passes under "
                               "shared_mask_sample(model, batch_size) (ANPVSLoss does), or set no generator")
        return _rng.draw_seed_tensor(self.generator)

    def _seed(self) -> int:
        return int(self._seed_tensor().item())

    def _shared_seed(self, batch_size: int) -> int:
        """The seed of this step's one sample for `batch_size` (drawn at its first use in the block)."""
        if batch_size not in self._shared:  # a tensor: under torch.compile a graph input, not a constant
            self._shared[batch_size] = {"seed": self._seed_tensor()}
        return int(self._shared[batch_size]["seed"].item())

    def sample(self, batch_size: int) -> torch.Tensor:
        """A relaxed mask z [batch_size, C]; under `shared_mask_sample` every pass of the block with
        this batch size gets the same sample (the clean and adversarial passes of one step)."""
        if self._shared is None:
            return ops.sample_mask(self.a(), self.b(), batch_size, self.temperature, seed=self._seed(),
                                   check_values=False)
        seed = self._shared_seed(batch_size)
        entry = self._shared[batch_size]
        if "z" not in entry:
            entry["z"] = ops.sample_mask(*self._params(), batch_size, self.temperature, seed=seed,
                                         check_values=False)
        return entry["z"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"mask over {self.num_features} units got input of shape {tuple(x.shape)}")
        if not self.training:
            scale = self.eval_scale().to(x.device)
            if scale.requires_grad:  # gradients to a, b wanted: the fused op gives them in the same pass
                return ops.channel_scale(x, scale)
            # a constant per-channel scale (attacks, inference): one native broadcast multiply
            return x * broadcast_over_channels(scale.to(x.dtype), x)
        # under shared_mask_sample each pass re-derives the step's one sample from its seed in the
        # fused op (the same z that `sample` gives): no mask tensor, one kernel each way
        seed = self._seed() if self._shared is None else self._shared_seed(x.shape[0])
        return ops.masked_activation(x, *self._params(), self.temperature, training=True, seed=seed,
                                     check_values=False)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, alpha={self.alpha}, temperature={self.temperature}, "
                f"threshold={self.threshold}")


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto `device` without the host waiting for it (through pinned memory, for CUDA)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def refresh_eval_states(found: nn.Module | list[BetaBernoulliMask]) -> None:
    """Bring every stale mask's (of a model, or of a list) eval scale and kept indices up to date in
    one batched pass per (device, dtype, threshold): one chain of ops and one copy to the host for all
    the masks (on a GPU one synchronisation, where each mask's own `nonzero` would be one each). Same
    values as the per-mask path; masks that are up to date are left alone.

    A model compiled with torch.compile computes the channels kept at the last refresh: ANPVSLoss
    and the attacks call this every step; a custom training loop of a compiled model calls it once
    per step, eagerly (outside the compiled function)."""
    if isinstance(found, nn.Module):
        found = [m for m in found.modules() if isinstance(m, BetaBernoulliMask)]
    groups: dict[tuple, list] = {}
    for m in found:
        if not m._eval_fresh():
            groups.setdefault((m.a_uc.device, m.a_uc.dtype, m.threshold), []).append(m)
    with torch.inference_mode(False), torch.no_grad():
        for (device, _, threshold), group in groups.items():
            scale = ops.eval_mask(*_concatenated_params(group), threshold, check_values=False)
            sizes = [m.num_features for m in group]
            for m, s, s_host in zip(group, scale.split(sizes), scale.cpu().split(sizes)):
                m._set_eval_state(s, host_to_device(s_host.nonzero().squeeze(1), device))


def total_kl(found: list[BetaBernoulliMask]) -> torch.Tensor:
    """The sum of the masks' KL terms: one batched op per prior (and device, dtype), their a and b
    concatenated; the same value as summing each mask's kl(), in a few ops instead of ~40 per mask."""
    if not found:
        raise ValueError("total_kl needs at least one mask")
    groups: dict[tuple, list] = {}
    for m in found:
        a, b = m._params()
        groups.setdefault((m.alpha, a.device, a.dtype), []).append((a, b))
    terms = [ops.kl_kumaraswamy_beta(torch.cat([a for a, _ in ab]), torch.cat([b for _, b in ab]), key[0],
                                     check_values=False) for key, ab in groups.items()]
    if len(terms) == 1:
        return terms[0]
    return torch.stack([t.to(terms[0].device, torch.float32) for t in terms]).sum()


@contextlib.contextmanager
def shared_mask_sample(model: nn.Module, batch_size: int | None = None) -> Iterator[None]:
    """Within the block, every training-mode pass of the model uses one mask sample per layer (per
    batch size): the clean and the adversarial pass of a step see the same mask, so VS measures the
    attack and not mask noise (the original code drew independent masks).

    batch_size: draw the seeds of that batch size now, one per mask in module order, rather than at
    each mask's first use: a compiled model then only reads them (no pass draws inside its graph, and
    a mask generator, which a graph cannot call, stays outside)."""
    found = [m for m in model.modules() if isinstance(m, BetaBernoulliMask)]
    if any(m._shared is not None for m in found):
        raise RuntimeError("shared_mask_sample() blocks cannot be nested")
    for m in found:
        m._shared = {}
        if batch_size is not None and m.training:  # eval-mode masks draw nothing
            m._shared_seed(batch_size)
    _batched_params(found)
    try:
        yield
    finally:
        for m in found:
            m._shared, m._shared_params = None, {}


def _batched_params(found: list[BetaBernoulliMask]) -> None:
    """Every mask's (a, b) for the block from one clamp + softplus per (device, dtype) over all masks'
    raw parameters (concatenated, then split into views): a handful of ops forward and backward
    instead of a dozen per mask. The same values as each mask's a(), b()."""
    groups: dict[tuple, list] = {}
    for m in found:
        groups.setdefault((m.a_uc.device, m.a_uc.dtype), []).append(m)
    for group in groups.values():
        if len(group) < 2:
            continue
        sizes = [m.num_features for m in group]
        a, b = _concatenated_params(group)
        for m, a_m, b_m in zip(group, a.split(sizes), b.split(sizes)):
            m._shared_params[m._params_key()] = (a_m, b_m)


def _concatenated_params(group: list[BetaBernoulliMask]) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of all the masks in group, concatenated: one clamp + softplus each for all of them."""
    return a_from(torch.cat([m.a_uc for m in group])), b_from(torch.cat([m.b_uc for m in group]))
