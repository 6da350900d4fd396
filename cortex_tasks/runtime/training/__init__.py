"""Training jobs: validate the data, train, evaluate on held-out data, register a `staging` version,
optionally promote it to canary through an evaluation gate. Runs on the `training` queue."""
