"""Monitoring as code: grafana/config.py holds the settings the dashboards and the alerts share;
grafana/generate.py writes grafana/dashboards/*.json from them (`python -m grafana.generate`)."""
