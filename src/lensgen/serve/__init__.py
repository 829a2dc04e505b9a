"""`lensgen serve`: an OpenAI-Images-compatible HTTP API and a web page over one or more model folders.

config.py (limits and knobs), schema.py (request checking with messages that say what is allowed),
batcher.py (dynamic batching behind a bounded queue), host.py (the loaded models and one sampler call per
batch), metrics.py (Prometheus text), api.py (the FastAPI app), cli.py (the command), web/ (the page).
"""
