"The HTTP API (api) and the runtime that starts Ray and the service (runtime); serve/app.py deploys them."
