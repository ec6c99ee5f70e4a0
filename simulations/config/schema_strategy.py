"""The ``strategy`` group of the config schema
(:mod:`bouquet.simulations.config.schema`): every strategy value and its keys."""

from __future__ import annotations

from bouquet.simulations.config.schema_keys import FRACTION
from bouquet.simulations.config.schema_keys import PARTIAL
from bouquet.simulations.config.schema_keys import SEED
from bouquet.simulations.config.schema_keys import Key
from bouquet.simulations.config.schema_keys import choice
from bouquet.simulations.config.schema_keys import flag
from bouquet.simulations.config.schema_keys import integer
from bouquet.simulations.config.schema_keys import real
from bouquet.simulations.config.schema_keys import target
from bouquet.staleness_window import CONTEXTS
from bouquet.strategies.async_rules import LEARNER_RATES
from bouquet.strategies.async_rules import WINDOW_SIDES
from bouquet.strategies.kl_math import BAD_HISTOGRAM_RULES
from bouquet.strategies.kl_math import DIRECTIONS
from bouquet.strategies.kl_math import MODES
from bouquet.strategies.kl_math import REFERENCES
from bouquet.strategies.staleness import POLICIES

# ----------------------------------------------------------------------------- strategy
FEDAVG = {
    "fraction_train": real(
        "(0, 1]", doc="share of connected nodes sampled for training"
    ),
    "fraction_evaluate": FRACTION,
    "min_train_nodes": integer("[1, inf)"),
    "min_available_nodes": integer(
        "[1, inf)", doc="nodes to wait for before the first round"
    ),
    "min_evaluate_nodes": integer("[0, inf)", optional=True),
}
STRATEGY = {
    "fedavg": {"_target_": target("flwr.serverapp.strategy.FedAvg"), **FEDAVG},
    "fedprox": {
        "_target_": target("flwr.serverapp.strategy.FedProx"),
        **FEDAVG,
        "proximal_mu": real(
            "[0, inf)", doc="mu of the proximal term (sent to the clients)"
        ),
    },
    "kl_weighted": {
        "_target_": target("bouquet.strategies.kl_weighted.KLWeightedFedAvg"),
        "_partial_": PARTIAL,
        **FEDAVG,
        "mode": choice(*MODES, doc="exp: n^a exp(-D/tau) | disco: ReLU(n/N - a D + b)"),
        "tau": real("(0, inf)", doc="exp temperature"),
        "a": real(
            "[0, inf)", doc="exp: exponent of n_i; disco: weight of the divergence"
        ),
        "b": real(doc="disco offset"),
        "reference": choice(
            *REFERENCES, doc="Q: this round's pooled histograms or the server's labels"
        ),
        "direction": choice(*DIRECTIONS, doc="which clients count more"),
        "bad_histogram": choice(
            *BAD_HISTOGRAM_RULES, doc="a reply without a usable histogram"
        ),
        "smoothing": real("[0, 1)", doc="eps of the smoothed distributions"),
    },
    "depth_fedavg": {
        "_target_": target("bouquet.strategies.depth_fedavg.DepthFedAvg"),
        **FEDAVG,
        "depths": Key("int list", "[1, inf)", null="1..L", doc="depths to draw from"),
        "depth_probs": Key(
            "float list",
            "[0, inf)",
            null="uniform",
            doc="weights of depths (one per depth)",
        ),
        "assignment": choice(
            "per_round",
            "fixed",
            doc="redraw depths every round (seeded by seed, round, "
            "partition-id) or once per node",
        ),
        "node_info_timeout": real(
            "(0, inf)", doc="seconds to wait for the nodes' node-info answers"
        ),
        "seed": SEED,
    },
    "async": {
        "_target_": target("bouquet.strategies.async_fedavg.AsyncFedAvg"),
        "policy": choice(*POLICIES, doc="staleness policy"),
        "alpha": real("(0, 1]", doc="mixing rate of the mixing policies"),
        "exponent": real(
            "[0, inf)",
            null="the policy's default",
            doc="a of (1+tau)^-a or of the window ratio",
        ),
        "hinge_a": real("(0, inf)"),
        "hinge_b": real("[0, inf)"),
        "buffer_size": integer("[1, inf)", doc="fedbuff: updates per server step"),
        "server_lr": real("(0, inf)", doc="fedbuff: eta_g"),
        "window": integer("[1, inf)", doc="sliding_window: staleness samples kept"),
        "context": choice(*CONTEXTS, doc="sliding_window: context value of the window"),
        "max_scale": real("(0, inf)", doc="sliding_window: cap of the scale"),
        "per_node": flag(doc="sliding_window, window_side=server: one window per node"),
        "window_side": choice(
            *WINDOW_SIDES,
            doc="sliding_window: who keeps the window and picks the scale",
        ),
        "learner_rate": choice(
            *LEARNER_RATES,
            doc="window_side=learner: the scale acts on the local lr, the server "
            "mixing, or both",
        ),
        "max_staleness": integer("[0, inf)", null="no cutoff"),
        "max_updates": integer("[1, inf)", null="simulation.num_rounds x nodes"),
        "max_wall_s": real("(0, inf)", null="no wall-time budget"),
        "eval_every": integer("[1, inf)", doc="evaluate every E accepted updates"),
        "plateau_window": integer(
            "[0, inf)",
            null="max(5, ceil(5 x nodes / eval_every))",
            doc="stop after this many evaluations without gain (0: off)",
        ),
        "plateau_min_delta": real(
            "[0, inf)", doc="the gain of plateau_metric that counts"
        ),
        "plateau_metric": Key("str", doc="metric of the plateau rule"),
        "plateau_mode": choice("max", "min"),
        "reply_timeout_s": real("(0, inf)", null="simulation.round_timeout_s"),
        "max_node_failures": integer(
            "[1, inf)", doc="consecutive failures before a node is dropped"
        ),
        "poll_interval_s": real("(0, inf)"),
    },
}
