"""The admin site: REST API, dashboard, Prometheus endpoint."""
