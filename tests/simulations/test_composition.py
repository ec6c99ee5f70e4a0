"""Composition matrix (issue 13): every ``client`` x ``strategy`` x ``server`` x
``model`` that validation accepts runs one in-process round on digits (MovieLens for the
recommendation values), without Ray, and every feature it names is shown to act; every
other combination is refused before anything starts, with a message naming its conflict.

A feature that did not act fails the test: decoded payloads (the new global model is the
weighted mean of the *decoded* updates), KL weights (reported for every node *and*
used), FedProx's mu (in every node's train config), the server-side adjustment (it
received the aggregate and its output became the global model), depth sub-models (nodes
got sub-models of different depths, aggregated by name), the asynchronous loop (updates
applied on arrival, with staleness), slow nodes (their speed factor reported and slept),
early exits (every exit trained and evaluated), the recommendation task (private user
factors, federated evaluation). How the matrix is enumerated and run:
``tests/composition_matrix.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from composition_matrix import AXES
from composition_matrix import COMBOS
from composition_matrix import NUM_NODES
from composition_matrix import VALUES
from composition_matrix import Combo
from composition_matrix import Outcome
from composition_matrix import assembled
from composition_matrix import composed
from composition_matrix import run_round
from composition_matrix import verdict_or_skip
from flwr.app import Array
from inprocess_grid import Delivery

from bouquet import keys
from bouquet.clients.compressed import is_statistic
from bouquet.codecs import decode
from bouquet.strategies.compressed import Compressed
from bouquet.strategies.depth_math import name_depths
from bouquet.strategies.depth_math import submodel_names
from bouquet.strategies.wrapper import chain

DENSE = "numpy.ndarray"
Check = Callable[[Outcome], "str | None"]


# ----------------------------------------------------------------- helpers
def _train(o: Outcome) -> list[Delivery]:
    """The train messages every node received, in the order they were sent."""
    return o.grid.deliveries("train")


def _update(reply: Array, sent: Array) -> np.ndarray:
    """The update a reply carries against what the node was sent (float64)."""
    ref = sent.numpy().astype(np.float64)
    if reply.stype == DENSE:
        return reply.numpy().astype(np.float64) - ref
    return (
        decode(reply.stype, reply.dtype, tuple(reply.shape), reply.data)
        .to_dense()
        .astype(np.float64)
        .reshape(ref.shape)
    )


def _weights(o: Outcome) -> dict[int, float]:
    """Aggregation weight of every node: its KL weight (``kl_weighted``) or its
    ``num-examples``."""
    if o.cfg["strategy"]["_target_"].endswith("KLWeightedFedAvg"):
        row = o.rows[-1]
        return dict(zip(row["kl_node_ids"], row["kl_weights"], strict=True))
    return {d.node_id: float(d.reply_metrics[keys.NUM_EXAMPLES]) for d in _train(o)}


def _expected_aggregate(o: Outcome) -> dict[str, np.ndarray]:
    """For every array: what it was sent as, plus the weighted mean of the decoded
    updates of the
    nodes that returned it (weights normalised over those nodes)."""
    weights = _weights(o)
    sent = {k: v for d in _train(o) for k, v in d.received.items()}
    out = {}
    for name, array in sent.items():
        replies = {d.node_id: _reply_as_model(d) for d in _train(o)}
        carriers = [d for d in _train(o) if name in replies[d.node_id]]
        total = sum(weights[d.node_id] for d in carriers)
        value = array.numpy().astype(np.float64)  # unchanged if no node returned it
        for d in carriers:
            value = value + weights[d.node_id] / total * _update(
                replies[d.node_id][name], d.received[name]
            )
        out[name] = value
    return out


def _reply_as_model(d: Delivery) -> dict[str, Array]:
    """A reply's arrays by model name; a ``client=shared_topk`` reply (one vector of the
    values at
    the round's shared coordinates) becomes the received model plus those values
    there."""
    from bouquet.codecs.shared_topk import shared_indices
    from bouquet.keys import SHARED_ARRAY
    from bouquet.keys import SHARED_K
    from bouquet.keys import SHARED_SEED

    if SHARED_ARRAY not in d.reply_arrays:
        return dict(d.reply_arrays)
    floats = {
        n: a.numpy() for n, a in d.received.items() if a.numpy().dtype.kind == "f"
    }
    total = sum(int(v.size) for v in floats.values())
    delta = np.zeros(total)
    delta[
        shared_indices(
            total,
            int(d.config[SHARED_K]),
            int(d.config[SHARED_SEED]),
            int(d.config["server-round"]),
        )
    ] = d.reply_arrays[SHARED_ARRAY].numpy().astype(np.float64)
    out, offset = {}, 0
    for name, ref in floats.items():
        out[name] = Array(
            (
                ref.astype(np.float64)
                + delta[offset : offset + ref.size].reshape(ref.shape)
            ).astype(ref.dtype)
        )
        offset += ref.size
    return out


def _differs(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], name: str, against: str
) -> str | None:
    """Why ``a`` (``name``) is not ``b`` (``against``) to float32 precision, else
    None."""
    if set(a) != set(b):
        return (
            f"{name} has arrays {sorted(set(a) ^ set(b))[:4]} that {against} has not "
            "(or the other way round)"
        )
    for key in a:
        if not np.allclose(
            np.asarray(a[key], dtype=np.float64), b[key], rtol=1e-5, atol=1e-6
        ):
            gap = float(np.max(np.abs(np.asarray(a[key], dtype=np.float64) - b[key])))
            return f"{name}[{key!r}] differs from {against} by up to {gap:.3g}"
    return None


def _links(o: Outcome) -> list[str]:
    return [type(s).__name__ for s in chain(o.strategy)]


def _stypes(o: Outcome) -> set[str]:
    return {a.stype for d in _train(o) for a in d.reply_arrays.values()}


# ------------------------------------------------------------------ checks
def ran_cleanly(o: Outcome) -> str | None:
    """No client error, every node's reply used, the model changed and stayed finite."""
    if o.grid.errors:
        return f"{len(o.grid.errors)} client errors; the first: {o.grid.errors[0]}"
    ok, failed = (
        sum(r["clients_ok"] for r in o.rows),
        sum(r["clients_failed"] for r in o.rows),
    )
    if (ok, failed) != (NUM_NODES, 0) or len(_train(o)) != NUM_NODES:
        return (
            f"{len(_train(o))} train messages, {ok} replies used, {failed} failed or "
            f"dropped: {o.rows[-1].get('drop_reasons')}"
        )
    if o.summary.get("status") != "ok":
        return f"run status {o.summary.get('status')!r}"
    if sum(r["bytes_up"] for r in o.rows) != sum(d.reply_bytes for d in o.grid.log):
        return "metrics.jsonl bytes_up differ from the bytes the nodes sent"
    if not all(np.all(np.isfinite(v)) for v in o.final.values()):
        return "the final model has non-finite values"
    if all(np.array_equal(o.final[k], o.initial[k]) for k in o.initial):
        return "the global model did not change"
    return None


def shared_support_uploads(o: Outcome) -> str | None:
    """Every reply is one float32 vector of the round's shared coordinates (fewer bytes
    than a
    quarter of the model); ``SharedSupport`` rebuilt them; the nodes keep their
    residual."""
    from bouquet.clients.shared_topk import RESIDUAL
    from bouquet.keys import SHARED_ARRAY
    from bouquet.keys import SHARED_K
    from bouquet.strategies.privacy_secagg import SharedSupport

    for d in _train(o):
        if set(d.reply_arrays) != {SHARED_ARRAY}:
            return (
                f"node {d.node_id} replied {sorted(d.reply_arrays)[:3]}, not one "
                f"{SHARED_ARRAY!r} vector"
            )
        vec = d.reply_arrays[SHARED_ARRAY].numpy()
        if vec.dtype != np.float32 or vec.shape != (int(d.config[SHARED_K]),):
            return (
                f"node {d.node_id} sent {vec.dtype} {vec.shape}, expected float32 "
                f"({d.config[SHARED_K]},)"
            )
        if not d.reply_bytes * 4 < d.received_bytes:
            return (
                f"node {d.node_id} sent {d.reply_bytes} bytes for a "
                f"{d.received_bytes}-byte model"
            )
    if not any(isinstance(s, SharedSupport) for s in chain(o.strategy)):
        return f"no SharedSupport in {_links(o)}"
    if any(RESIDUAL not in c.state.array_records for c in o.grid.contexts.values()):
        return "a node kept no error-feedback residual in context.state"
    return None


def compressed_uploads(codec: str) -> Check:
    """Replies carry ``bouquet.<codec>/1``, smaller than dense; the server decoded
    them."""

    def check(o: Outcome) -> str | None:
        lossy = {
            a.stype
            for d in _train(o)
            for n, a in d.reply_arrays.items()
            if not is_statistic(n)
        }
        exact = {
            a.stype
            for d in _train(o)
            for n, a in d.reply_arrays.items()
            if is_statistic(n)
        }
        if lossy != {f"bouquet.{codec}/1"}:
            return f"reply stypes {lossy}, not bouquet.{codec}/1"
        # normalisation statistics travel dense and exact
        if exact - {"bouquet.dense/1"}:
            return f"normalisation statistics sent as {exact}, not bouquet.dense/1"
        for d in _train(o):
            if not d.reply_bytes * 4 < d.received_bytes:
                return (
                    f"node {d.node_id} sent {d.reply_bytes} bytes for a "
                    f"{d.received_bytes}-byte model"
                )
        links = chain(o.strategy)
        if o.is_async:
            from bouquet.strategies.decoding import decode_update

            loop = links[-1]
            return (
                None
                if loop.decoder is decode_update
                else f"the async loop's decoder is {loop.decoder!r}"
            )
        compressed = [s for s in links if isinstance(s, Compressed)]
        if len(compressed) != 1 or compressed[0].last_path not in ("fast", "dense"):
            return f"no Compressed that decoded this round in {_links(o)}"
        if codec != "ternary" and any(
            keys.EF_RESIDUAL not in c.state.array_records
            for c in o.grid.contexts.values()
        ):
            return "a node kept no error-feedback residual in context.state"
        return None

    check.__doc__ = compressed_uploads.__doc__
    return check


def dense_uploads(o: Outcome) -> str | None:
    """Replies are dense, and nothing in the chain decodes."""
    if _stypes(o) != {DENSE}:
        return f"reply stypes {_stypes(o)}, not dense"
    return "Compressed in a dense run" if "Compressed" in _links(o) else None


def weighted_mean(o: Outcome) -> str | None:
    """The aggregate is the weighted mean of the decoded updates (before any
    adjustment)."""
    aggregate = o.adjusted[0][0] if o.adjusted else o.final
    return _differs(
        aggregate,
        _expected_aggregate(o),
        "the aggregate",
        "the weighted mean of the decoded updates",
    )


def proximal_mu(o: Outcome) -> str | None:
    """FedProx's mu reached every node's train config (TorchClient adds the proximal
    term)."""
    mu = o.cfg["strategy"]["proximal_mu"]
    got = [d.config.get(keys.PROXIMAL_MU) for d in _train(o)]
    if not mu > 0 or got != [mu] * NUM_NODES:
        return f"proximal-mu in the train configs {got}, configured {mu}"
    return weighted_mean(o)


def kl_weights(o: Outcome) -> str | None:
    """KL weights reported for every node, unlike FedAvg's, and used for the
    aggregate."""
    row = o.rows[-1]
    nodes, weights = row.get("kl_node_ids"), row.get("kl_weights")
    if (
        sorted(nodes or []) != sorted(o.grid.node_ids)
        or len(weights or []) != NUM_NODES
    ):
        return (
            f"kl_node_ids {nodes} / kl_weights {weights} do not cover the nodes "
            f"{o.grid.node_ids}"
        )
    n = {d.node_id: float(d.reply_metrics[keys.NUM_EXAMPLES]) for d in _train(o)}
    fedavg = [n[node] / sum(n.values()) for node in nodes]
    if np.allclose(weights, fedavg, atol=1e-3):
        return (
            f"kl_weights {weights} are FedAvg's shares: this round cannot show the "
            "KL weighting"
        )
    return weighted_mean(o)


def depth_submodels(o: Outcome) -> str | None:
    """Nodes got sub-models of different depths, reported per depth and aggregated by
    name."""
    depths = name_depths(o.initial)
    sent = []
    for d in _train(o):
        depth = d.config.get(keys.SUBMODEL_DEPTH)
        if not isinstance(depth, int) or list(d.received) != submodel_names(
            depths, depth
        ):
            return (
                f"node {d.node_id} was sent {len(d.received)} arrays for depth {depth}"
            )
        sent.append(depth)
    if len(set(sent)) < 2:
        return f"every node got the same depth {sent}"
    counts = Counter(sent)
    if o.rows[-1].get("nodes_per_depth") != [
        counts[i] for i in range(1, max(depths.values()) + 1)
    ]:
        return (
            f"nodes_per_depth {o.rows[-1].get('nodes_per_depth')} for the depths "
            f"sent {sent}"
        )
    return _differs(
        o.final,
        {**o.initial, **_expected_aggregate(o)},
        "the global model",
        "the by-name mean of the sub-models",
    )


def asynchronous(o: Outcome) -> str | None:
    """Updates applied on arrival (one version each), with staleness, until the
    budget."""
    last = o.rows[-1]
    if (
        not o.is_async
        or last.get("updates") != NUM_NODES
        or not str(last.get("stop_reason", "")).startswith("update budget")
    ):
        return f"not an asynchronous run to its update budget: {last}"
    # the in-process nodes answer at once: the 3 updates sent at version 0 arrive
    # together, and are applied at versions 0, 1, 2
    if (last.get("version"), last.get("staleness_max")) != (
        NUM_NODES,
        NUM_NODES - 1,
    ) or last.get("lr_scale") is None:
        return (
            f"version {last.get('version')}, staleness_max "
            f"{last.get('staleness_max')}, lr_scale {last.get('lr_scale')}"
        )
    return None


def slow_nodes(o: Outcome) -> str | None:
    """Every node reports its seeded speed factor and took at least factor x its
    training time."""
    from bouquet.clients.slow import speed_factors

    c = o.cfg["client"]
    factors = speed_factors(
        NUM_NODES,
        c["speed_sigma"],
        c["slow_fraction"],
        c["slow_factor"],
        c["speed_seed"],
    )
    if not max(factors) > 1.5:
        return f"speed factors {factors}: none is slow enough to show"
    for d in _train(o):
        pid = o.grid.contexts[d.node_id].node_config[keys.PARTITION_ID]
        factor, trained = (
            d.reply_metrics.get(keys.SPEED_FACTOR),
            float(d.reply_metrics[keys.TRAIN_TIME]),
        )
        if factor is None or not np.isclose(factor, factors[pid]):
            return (
                f"node {d.node_id} reported speed factor {factor}, expected "
                f"{factors[pid]}"
            )
        if d.seconds < factor * trained:
            return (
                f"node {d.node_id} (factor {factor:.2f}) took {d.seconds:.3f} s for "
                f"{trained:.3f} s of training"
            )
    return None


def early_exit_training(o: Outcome) -> str | None:
    """Each node trained the whole sub-model it received (every exit), with its
    multi-exit loss."""
    depths = name_depths(o.initial)
    for d in _train(o):
        received = max(depths[n] for n in d.received)
        if d.reply_metrics.get(keys.TRAINED_DEPTH) != received or set(
            d.reply_arrays
        ) != set(d.received):
            return (
                f"node {d.node_id} received depth {received}, trained "
                f"{d.reply_metrics.get(keys.TRAINED_DEPTH)}"
            )
    return None


def early_exit_evaluation(o: Outcome) -> str | None:
    """The server evaluated every exit, every round."""
    exits = o.exp.build_model().num_exits
    missing = [
        k
        for r in o.rows
        for k in (f"accuracy_exit_{i}" for i in range(1, exits + 1))
        if r.get(k) is None
    ]
    return f"rows miss {missing[:3]}" if missing or exits < 2 else None


def recommendation(o: Outcome) -> str | None:
    """User factors stay on the nodes; the item side travels; clients evaluate every
    round."""
    if any(
        keys.RECSYS_USER_STATE not in c.state.array_records
        for c in o.grid.contexts.values()
    ):
        return "a node kept no user factors in context.state"
    sent = {n for d in _train(o) for n in (*d.received, *d.reply_arrays)}
    if not sent or any(not n.startswith("shared.") for n in sent):
        return f"arrays other than the shared item side travelled: {sorted(sent)[:4]}"
    evaluated = sorted(d.node_id for d in o.grid.deliveries("evaluate") if not d.error)
    row = o.rows[-1]
    if evaluated != o.grid.node_ids or any(
        row.get(k) is None for k in ("rmse", "hr_at_10", "ndcg_at_10")
    ):
        return (
            f"evaluated on {evaluated}; last row rmse={row.get('rmse')} "
            f"hr_at_10={row.get('hr_at_10')}"
        )
    return None


def model_is(*class_names: str) -> Check:
    """The configured model (one of ``class_names`` for this dataset) is what
    travels."""

    def check(o: Outcome) -> str | None:
        model = type(o.exp.build_model()).__name__
        if model not in class_names:
            return f"built a {model}, expected {' or '.join(class_names)}"
        sent = {k: tuple(v.shape) for d in _train(o) for k, v in d.received.items()}
        expected = {k: tuple(v.shape) for k, v in o.initial.items()}
        if sent != expected:
            return (
                f"arrays {sorted(set(sent.items()) ^ set(expected.items()))[:3]} "
                "differ from the model's"
            )
        return None

    check.__doc__ = model_is.__doc__
    return check


def server_adjusted(o: Outcome) -> str | None:
    """The outermost link adjusted round 1's aggregate, and its output is the global
    model."""
    links = chain(o.strategy)
    if type(links[0]).__name__ != "ServerAdjusted" or links[0].adjusted_rounds != [1]:
        return f"no ServerAdjusted adjusting round 1 outermost in {_links(o)}"
    if (
        len(o.adjusted) != 1
        or o.rows[-1].get("adjusted") is not True
        or o.rows[-1].get("adjust_loss") is None
    ):
        return (
            f"adjust_fn ran {len(o.adjusted)} times; row "
            f"adjusted={o.rows[-1].get('adjusted')}"
        )
    before, after = o.adjusted[0]
    if all(np.array_equal(before[k], after[k]) for k in before):
        return "the adjustment left the aggregate unchanged"
    return _differs(o.final, after, "the global model", "the adjusted aggregate")


def no_server_step(o: Outcome) -> str | None:
    """Nothing adjusts the aggregate."""
    if (
        "ServerAdjusted" in _links(o)
        or o.adjusted
        or any("adjusted" in r for r in o.rows)
    ):
        return f"an adjustment ran with server=none: {_links(o)}"
    return None


FEATURES: dict[tuple[str, str], Check] = {
    ("client", "plain"): dense_uploads,
    ("client", "topk"): compressed_uploads("topk"),
    ("client", "stc"): compressed_uploads("stc"),
    ("client", "shared_topk"): shared_support_uploads,
    ("client", "ternary"): compressed_uploads("ternary"),
    ("client", "slow"): slow_nodes,
    ("client", "early_exit"): early_exit_training,
    ("client", "recsys"): recommendation,
    ("strategy", "fedavg"): weighted_mean,
    ("strategy", "fedprox"): proximal_mu,
    ("strategy", "kl_weighted"): kl_weights,
    ("strategy", "depth_fedavg"): depth_submodels,
    ("strategy", "async"): asynchronous,
    ("server", "none"): no_server_step,
    ("server", "adjust"): server_adjusted,
    # digits are 8x8: auto picks the MLP
    ("model", "auto"): model_is("MLP", "MatrixFactorization"),
    ("model", "mlp"): model_is("MLP"),
    ("model", "lenet"): model_is("LeNet"),
    ("model", "cnn_bn"): model_is("BatchNormCNN"),
    ("model", "early_exit"): early_exit_evaluation,
    ("model", "mf"): model_is("MatrixFactorization"),
}
# Values that no combination of the matrix runs: the matrix runs on digits (8x8 inputs).
NOT_ON_DIGITS = {
    "lenet": "LeNet needs inputs >= 16x16 (its refusal is checked with the others)"
}
MUST_ACCEPT = [
    Combo("topk", "kl_weighted", "adjust", "mlp"),
    Combo("stc", "fedprox", "adjust", "auto"),
    Combo("ternary", "fedavg", "none", "auto"),
    Combo("slow", "async", "none", "mlp"),
    Combo("early_exit", "depth_fedavg", "none", "early_exit"),
    Combo("recsys", "fedavg", "none", "mf"),
]


# ------------------------------------------------------------------- tests
def test_every_group_value_has_a_feature_check() -> None:
    """A new value in conf/ needs its check here: a value without one would be silently
    skipped."""
    assert {(g, v) for g in AXES for v in VALUES[g]} == set(FEATURES)


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(c))
def test_combination_is_refused_or_every_feature_acts(
    combo: Combo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused: one line naming the combination's own values. Accepted: one in-process
    round in
    which the run is clean and the feature of each of its four values acted."""
    reason = verdict_or_skip(combo)
    # refused before anything starts: one line naming its own conflict
    if reason is not None:
        named = [f"{g}={v}" for g, v in combo.options.items() if f"{g}={v}" in reason]
        assert reason.strip() and "\n" not in reason and named, (
            f"{combo} refused without naming its values: {reason!r}"
        )
        return
    cfg = composed(combo)
    assert cfg == assembled(combo), (
        "the enumeration validated another config than Hydra composes"
    )
    outcome = run_round(cfg, tmp_path, monkeypatch)
    checks = [
        ran_cleanly,
        *(FEATURES[(g, v)] for g, v in zip(AXES, combo, strict=True)),
    ]
    problems = [
        f"{(check.__doc__ or '').splitlines()[0]} -> {why}"
        for check in checks
        if (why := check(outcome))
    ]
    assert not problems, f"{combo}: features that did not act:\n" + "\n".join(problems)


def test_accepted_combinations_cover_every_value() -> None:
    """Validation does not refuse its way out of the matrix: every value runs
    somewhere."""
    accepted = [c for c in COMBOS if verdict_or_skip(c) is None]
    for group in AXES:
        used = {getattr(c, group) for c in accepted}
        assert used == set(VALUES[group]) - set(NOT_ON_DIGITS), (
            f"{group} values never accepted: {set(VALUES[group]) - used}"
        )
    assert not [c for c in MUST_ACCEPT if c not in accepted]


def test_async_and_early_exit_refuse_server_adjust() -> None:
    """Issue 13 observations 7 and 8: both are refused before start, naming the
    conflict."""
    bases = [
        c
        for c in COMBOS
        if c.server == "none" and (c.strategy == "async" or c.model == "early_exit")
    ]
    bases = [c for c in bases if verdict_or_skip(c) is None]
    assert {c.strategy for c in bases} >= {"async"} and {c.model for c in bases} >= {
        "early_exit"
    }
    for base in bases:
        reason = verdict_or_skip(base._replace(server="adjust"))
        assert reason is not None and "server=adjust" in reason, (base, reason)
        assert "strategy=async" in reason or "model=early_exit" in reason, reason
