"""The loop of the ``search`` task (:mod:`bouquet.simulations.methods.search`): the
shared weights' training steps, the controller's REINFORCE steps, the final scoring,
and the measures they use (:func:`network_costs`, :func:`path_accuracy`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from bouquet.models.early_exit import EarlyExitNet
from bouquet.models.early_exit import exit_costs
from bouquet.models.nas import Architecture
from bouquet.models.nas import SearchSpace
from bouquet.models.nas import SuperNet
from bouquet.models.nas import baseline_architecture
from bouquet.models.nas import search_space_size
from bouquet.models.nas_controller import Controller
from bouquet.models.nas_controller import Reinforce
from bouquet.models.nas_controller import cost_reward

logger = logging.getLogger("bouquet.progress")

#: ``search.cost``: what the reward prices, measured on the early-exit model of a
#: network
COSTS = {"params": ("params",), "macs": ("macs",), "params_macs": ("params", "macs")}


def network_costs(space: SearchSpace, indices: list[int]) -> dict[str, Any]:
    """Costs of the early-exit model on network ``indices``: ``params`` (all of it),
    ``macs``
    (mean over the exits of the MACs up to each exit), and both per exit."""
    model = EarlyExitNet(Architecture.from_indices(space, indices))
    per_exit = exit_costs(model)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": float(np.mean(per_exit["macs_per_exit"])),
        **per_exit,
    }


@torch.no_grad()
def path_accuracy(
    net: SuperNet, x: np.ndarray, y: np.ndarray, indices: list[int], batch: int = 1000
) -> float:
    """Accuracy of the network ``indices`` with the shared weights."""
    net.eval()
    correct = 0
    for s in range(0, len(y), batch):
        logits = net(torch.from_numpy(x[s : s + batch]), indices)
        correct += int((logits.argmax(1) == torch.from_numpy(y[s : s + batch])).sum())
    return correct / len(y)


class Search:
    """One search run (see the module docstring); :meth:`run` returns the chosen
    network."""

    def __init__(
        self,
        space: SearchSpace,
        data: tuple[np.ndarray, ...],
        settings: dict[str, Any],
        seed: int = 0,
    ) -> None:
        self.space = space
        self.s = settings
        self.x_train, self.y_train, self.x_val, self.y_val = data
        torch.manual_seed(seed)
        self.net = SuperNet(space)
        self.opt = torch.optim.Adam(
            self.net.parameters(), lr=float(settings["shared_lr"])
        )
        self.controller = Controller(
            space.num_pools,
            space.num_candidates,
            hidden=int(settings["controller_hidden"]),
            seed=seed,
        )
        self.rl = Reinforce(
            self.controller,
            lr=float(settings["controller_lr"]),
            baseline_decay=float(settings["baseline_decay"]),
            entropy_weight=float(settings["entropy_weight"]),
        )
        self.rng = np.random.default_rng(seed)
        self.baseline = baseline_architecture(space)
        self.baseline_indices = [
            space.candidates.index(c) for c in self.baseline.choices
        ]
        self.baseline_params = self.net.path_params(self.baseline_indices)
        self._costs: dict[tuple[int, ...], dict[str, Any]] = {}
        self.baseline_costs = self.costs(self.baseline_indices)
        self.seen: dict[tuple[int, ...], float] = {}
        self.history: list[dict[str, Any]] = []

    def costs(self, indices: list[int]) -> dict[str, Any]:
        """:func:`network_costs` of ``indices`` (cached: the space has ``N^L``
        networks)."""
        key = tuple(indices)
        if key not in self._costs:
            self._costs[key] = network_costs(self.space, list(indices))
        return self._costs[key]

    def reward(self, indices: list[int], accuracy: float) -> float:
        """:func:`cost_reward` of ``accuracy`` and the costs ``search.cost`` prices."""
        costs = self.costs(indices)
        ratios = {
            c: costs[c] / self.baseline_costs[c] for c in COSTS[str(self.s["cost"])]
        }
        return cost_reward(
            accuracy, ratios, beta=int(self.s["beta"]), w=float(self.s["w"])
        )

    def train_shared(self, warmup: bool) -> float:
        self.net.train()
        total = 0.0
        for _ in range(int(self.s["shared_batches"])):
            if warmup:
                indices = [
                    int(i)
                    for i in self.rng.integers(
                        0, self.space.num_candidates, self.space.num_pools
                    )
                ]
            else:
                with torch.no_grad():
                    indices = self.controller.sample()[0]
            idx = self.rng.choice(
                len(self.y_train),
                size=min(int(self.s["batch_size"]), len(self.y_train)),
                replace=False,
            )
            self.opt.zero_grad()
            loss = nn.functional.cross_entropy(
                self.net(torch.from_numpy(self.x_train[idx]), indices),
                torch.from_numpy(self.y_train[idx]),
            )
            loss.backward()
            self.opt.step()
            total += float(loss.detach())
        return total / int(self.s["shared_batches"])

    def train_controller(self) -> dict[str, float]:
        vidx = self.rng.choice(
            len(self.y_val),
            size=min(int(self.s["val_batch"]), len(self.y_val)),
            replace=False,
        )
        samples, accs, sampled = [], [], []
        for _ in range(int(self.s["controller_samples"])):
            indices, logp, ent = self.controller.sample()
            acc = path_accuracy(self.net, self.x_val[vidx], self.y_val[vidx], indices)
            r = self.reward(indices, acc)
            self.seen[tuple(indices)] = max(r, self.seen.get(tuple(indices), -1.0))
            samples.append((logp, ent, r))
            accs.append(acc)
            costs = self.costs(indices)
            sampled.append(
                {
                    "indices": list(indices),
                    "accuracy": acc,
                    "params": costs["params"],
                    "macs": costs["macs"],
                    "reward": r,
                }
            )
        diag: dict[str, Any] = dict(self.rl.update(samples))
        return {
            "mean_reward": float(np.mean([s[2] for s in samples])),
            "mean_accuracy": float(np.mean(accs)),
            "sampled": sampled,
            **diag,
        }

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        for step in range(1, int(self.s["steps"]) + 1):
            warmup = step <= int(self.s["warmup_steps"])
            row: dict[str, Any] = {
                "step": step,
                "shared_loss": self.train_shared(warmup),
            }
            if not warmup:
                row.update(self.train_controller())
            row["elapsed_s"] = round(time.perf_counter() - t0, 3)
            self.history.append(row)
            if step % 10 == 0 or step == int(self.s["steps"]):
                logger.info(
                    "search step %d: shared loss %.4f, mean reward %s (%.1f s)",
                    step,
                    row["shared_loss"],
                    row.get("mean_reward"),
                    row["elapsed_s"],
                )
        return self.finalize(time.perf_counter() - t0)

    def finalize(self, search_s: float) -> dict[str, Any]:
        """Score the final candidates on more validation data and return the best (by
        reward)."""
        candidates = {tuple(self.controller.greedy())}
        with torch.no_grad():
            candidates |= {
                tuple(self.controller.sample()[0])
                for _ in range(int(self.s["final_samples"]))
            }
        candidates |= {
            k for k, _ in sorted(self.seen.items(), key=lambda kv: -kv[1])[:3]
        }
        n = min(int(self.s["final_val_samples"]), len(self.y_val))
        xv, yv = self.x_val[:n], self.y_val[:n]
        scored = []
        for indices in sorted(candidates):
            acc = path_accuracy(self.net, xv, yv, list(indices))
            scored.append((self.reward(list(indices), acc), acc, list(indices)))
        reward, acc, best = max(scored, key=lambda t: (t[0], t[1]))
        arch = Architecture.from_indices(self.space, best)
        chosen, base = self.costs(best), self.baseline_costs
        return {
            "architecture": arch.to_dict(),
            "choices": arch.choices,
            "accuracy": acc,
            "params": self.net.path_params(best),
            "reward": reward,
            "baseline_choices": self.baseline.choices,
            "baseline_params": self.baseline_params,
            "baseline_accuracy": path_accuracy(self.net, xv, yv, self.baseline_indices),
            "model_params": chosen["params"],
            "baseline_model_params": base["params"],
            "params_per_exit": chosen["params_per_exit"],
            "macs_per_exit": chosen["macs_per_exit"],
            "baseline_params_per_exit": base["params_per_exit"],
            "baseline_macs_per_exit": base["macs_per_exit"],
            "cost": str(self.s["cost"]),
            "beta": int(self.s["beta"]),
            "w": float(self.s["w"]),
            "search_space": search_space_size(self.space),
            "candidates_scored": [
                {
                    "choices": Architecture.from_indices(self.space, i).choices,
                    "accuracy": a,
                    "reward": r,
                    "params": self.costs(i)["params"],
                    "macs": self.costs(i)["macs"],
                }
                for r, a, i in scored
            ],
            "steps": int(self.s["steps"]),
            "search_wall_s": round(search_s, 3),
        }
