"""The worker runtime: models behind one interface, inference with dynamic batching, trainers, and the
document, chat and vector pipelines that need a loaded model. Only workers import it (through Celery's
`include`); it builds on `cortex_tasks.core`, and the gateway never imports it.
"""
