"""How a refused combination is written: a :class:`Combination` per rule, a module's
:class:`Rules` (``@RULES("keys")`` adds a function, :meth:`Rules.refuse_together` a pair
of group choices), and the shapes of message the rules share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bouquet.simulations.config.checks import Options

Rule = Callable[[dict[str, Any], Options], "str | None"]


@dataclass(frozen=True)
class Combination:
    """One refused combination: the keys it names, the README line, the rule."""

    keys: str
    why: str
    rule: Rule
    tasks: tuple[str, ...]
    simulation_only: bool


class Rules(list[Combination]):
    """A module's rules, in order; ``@rules("keys")`` adds the function below it (its
    docstring
    is the README line)."""

    def __call__(
        self,
        keys_: str,
        *,
        tasks: tuple[str, ...] = ("federated",),
        simulation_only: bool = False,
    ) -> Callable[[Rule], Rule]:
        def add(rule: Rule) -> Rule:
            self.append(
                Combination(
                    keys_,
                    " ".join((rule.__doc__ or "").split()),
                    rule,
                    tasks,
                    simulation_only,
                )
            )
            return rule

        return add

    def refuse_together(self, name: str, a: str, b: str, why: str, *, doc: str) -> None:
        """Add the rule ``name`` refusing the group choices ``a`` and ``b`` (e.g.
        ``"strategy=async"``) together, with the reason ``why``; ``doc`` is its README
        line."""
        (group_a, value_a), (group_b, value_b) = a.split("=", 1), b.split("=", 1)

        def rule(cfg: dict[str, Any], opt: Options) -> str | None:
            return (
                both(a, b, why)
                if opt.get(group_a) == value_a and opt.get(group_b) == value_b
                else None
            )

        rule.__name__ = rule.__qualname__ = name
        rule.__doc__ = doc
        self(f"{a} + {b}")(rule)


def both(a: str, b: str, why: str) -> str:
    return f"{a} and {b} cannot be combined: {why}"


# clients other than image classifiers with one global model
NON_IMAGE_CLIENTS = ("early_exit", "recsys")


def sync_image_only(
    choice: str, opt: Options, strategies: tuple[str, ...], why_strategy: str, what: str
) -> str | None:
    """The refusal of ``choice`` (e.g. ``downlink=stc``) with a strategy outside
    ``strategies`` (``why_strategy`` says why) or a client that is not an image
    classifier (``what`` is built and tested for those), else ``None``."""
    if opt["strategy"] not in strategies:
        return both(
            choice,
            f"strategy={opt['strategy']}",
            f"{why_strategy}: strategy={'|'.join(strategies)}",
        )
    if opt["client"] in NON_IMAGE_CLIENTS:
        return both(
            choice,
            f"client={opt['client']}",
            f"{what} is built and tested for image-classification clients "
            "(plain|topk|stc|ternary|slow)",
        )
    return None
