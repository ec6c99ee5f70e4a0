"""Running: ``bouquet-sim``, the ServerApp and ClientApp, the simulation engine,
metering,
results, checkpoints, trackers and reports."""
