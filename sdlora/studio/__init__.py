"""sdlora studio: a local web app and REST API over the whole workflow (datasets, training jobs, adapters,
generation, tools). ``create_app(root, token=None)`` in ``sdlora.studio.app`` builds the FastAPI app;
``sdlora studio`` serves it with uvicorn. Jobs run in child processes; their history lives in SQLite under
``ROOT/.sdlora-studio/``."""
