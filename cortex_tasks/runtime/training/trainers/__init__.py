"""One module per kind of model Cortex can train; each exposes `validate(rows, params)` and
`train(context, rows, params)`."""
