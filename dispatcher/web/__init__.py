"""The web process (``dispatcher web``): /metrics, /healthz and the webhook receiver."""
