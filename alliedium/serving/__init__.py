"The HTTP API (api), and the runtime that starts Ray and the service (runtime); serve/app.py wraps them in Ray Serve deployments."
