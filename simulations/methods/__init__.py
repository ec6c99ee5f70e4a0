"""The per-method parts of a run: the experiment (data, partitions, model, clients) and
each method's server-side pieces (compression, downlink, adjustment, early exits,
search, recommendation, privacy)."""
