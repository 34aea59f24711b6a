"""The FastAPI server (the ``server`` extra): app, routes, middleware, scoring engine, batcher,
memory guard and settings. Nothing in ``service.client`` or ``service.common`` imports it."""
